//! Dialog-event subscriptions (RFC 6665 with the RFC 4235 `dialog` package), sans-IO: who
//! watches which user over which dialog, until when, with which NOTIFY version and CSeq, and
//! each user's lines in this server's calls. SUBSCRIBEs, user states, NOTIFY answers and the
//! time come in; answers and NOTIFYs go out ([`Watchers::poll_output`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use csps::blf::watchers::{Config, Input, Output, Watchers};
//! use rand::SeedableRng;
//! let mut w = Watchers::new(Config::default(), Box::new(rand::rngs::StdRng::seed_from_u64(1)));
//! let now = Instant::now();
//! // After the driver authenticated a SUBSCRIBE for sip:bob@csps.local:
//! // w.handle(now, Input::Subscribe { key, from, local, req, aor: "sip:bob@csps.local".into() });
//! // then sends every Output::Respond and Output::Notify, and sleeps until w.poll_timeout().
//! assert!(w.poll_output().is_none());
//! assert_eq!(w.poll_timeout(), None);
//! # let _ = (now, Duration::ZERO);
//! ```
//!
//! Rules: a subscription lasts its `Expires` (capped at [`Config::max_expires`]; below
//! [`Config::min_expires`] is 423; `Expires: 0` on a new SUBSCRIBE is a one-time fetch); its
//! 200 is followed at once by a full-state NOTIFY, and so is every refresh and every change of
//! the watched user's lines; one NOTIFY is in flight per subscription at a time (a change
//! meanwhile is sent, as the then current full state, when it is answered); a NOTIFY answered
//! 481 or 408, or not answered, ends the subscription silently; expiry, `Expires: 0` and a
//! deleted user end it with a last NOTIFY (`terminated;reason=timeout|noresource`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use csps_sip::dialog::Dialog;
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Remote, Request, Response, SipHeaders, Transport};
use rand::RngCore;

use super::dialog_info::{self, DialogEntry, DialogState};
use crate::calls::{DialogIds, LineState, UserState};

/// The only event package served.
pub const EVENT: &str = "dialog";

/// Subscription lifetimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The longest subscription granted (a longer `Expires` is cut to it).
    pub max_expires: u32,
    /// The shortest one accepted (shorter, but not 0: 423 with `Min-Expires`).
    pub min_expires: u32,
    /// Granted when the SUBSCRIBE has no `Expires` (RFC 4235 §3.2: 3600).
    pub default_expires: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_expires: 3600,
            min_expires: 60,
            default_expires: 3600,
        }
    }
}

/// Names one subscription for its lifetime.
pub type SubId = u64;

/// How long a subscription that is ending waits for its NOTIFY in flight (Timer F, twice over)
/// before it is dropped without its last NOTIFY.
const ENDING_GRACE: Duration = Duration::from_secs(64);

/// Something for the core.
#[derive(Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // moved once into `handle`, never stored
pub enum Input {
    /// A SUBSCRIBE without a To tag, authenticated, for the user `aor` (`sip:user@domain`, an
    /// existing account); `local` is the gateway's address on the subscriber's flow.
    Subscribe {
        /// Its server transaction.
        key: TxnKey,
        /// Where it came from (NOTIFYs go back there).
        from: Remote,
        /// The gateway's address towards `from`.
        local: SocketAddr,
        /// The request.
        req: Request,
        /// The watched user.
        aor: String,
    },
    /// A SUBSCRIBE with a To tag: a refresh or an unsubscribe (`Expires: 0`) of a subscription,
    /// or 481.
    InDialog {
        /// Its server transaction.
        key: TxnKey,
        /// Where it came from.
        from: Remote,
        /// The request.
        req: Request,
    },
    /// A user's line changed (the call core's user-state bus).
    Line(UserState),
    /// Some user states were lost (the bus ran ahead): the changes from now on are kept until
    /// [`Input::Resync`].
    Lagged,
    /// Every line of the running calls, taken after [`Input::Lagged`]: it replaces the lines,
    /// the changes seen since are applied on top, and what differs is notified.
    Resync(Vec<UserState>),
    /// The final answer to subscription `sub`'s NOTIFY.
    NotifyAnswered {
        /// The subscription.
        sub: SubId,
        /// The status.
        status: u16,
    },
    /// Subscription `sub`'s NOTIFY got no answer (or could not be sent).
    NotifyTimedOut {
        /// The subscription.
        sub: SubId,
    },
    /// The user `aor` was deleted: its watchers get `terminated;reason=noresource`.
    Gone {
        /// `sip:user@domain`.
        aor: String,
    },
    /// The server stops: every subscription ends with `reason=deactivated` (the phone
    /// subscribes again, to this server once back or to another).
    Shutdown,
}

/// Work for the driver.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Answer this server transaction.
    Respond {
        /// The SUBSCRIBE's transaction.
        key: TxnKey,
        /// The answer (its To tag set).
        resp: Response,
    },
    /// Send this NOTIFY in a client transaction and report its answer as `sub`'s.
    Notify {
        /// The subscription.
        sub: SubId,
        /// The subscriber's flow.
        to: Remote,
        /// The request.
        req: Request,
    },
}

/// One subscription.
struct Sub {
    dialog: Dialog,
    to: Remote,
    /// Our Via without its branch (`SIP/2.0/UDP 192.0.2.1:5060`).
    via: String,
    /// The watched AoR as the body names it; `key` is its index form.
    entity: String,
    key: String,
    /// The `id` of the SUBSCRIBE's Event header, echoed in each NOTIFY (RFC 6665 §8.2.1).
    event_id: Option<String>,
    expires_at: Instant,
    /// The next NOTIFY's `version` (RFC 4235 §4.1: from 0, one up per NOTIFY).
    version: u32,
    /// Calls the last NOTIFY showed as not terminated (with their direction): the next one
    /// shows them terminated when they are gone.
    shown: BTreeMap<u64, bool>,
    in_flight: bool,
    /// A change came while a NOTIFY was in flight.
    dirty: bool,
    /// Ending with this reason: the last NOTIFY goes when none is in flight.
    ending: Option<&'static str>,
}

/// A user's line in one call.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    initiator: bool,
    state: DialogState,
    /// The early dialog a pickup names, while ringing.
    dialog: Option<DialogIds>,
}

/// The subscriptions of one server and the lines they report.
pub struct Watchers {
    cfg: Config,
    rng: Box<dyn RngCore + Send>,
    subs: HashMap<SubId, Sub>,
    /// (Call-ID, the subscriber's tag) → subscription.
    by_dialog: HashMap<(String, String), SubId>,
    /// Watched AoR (index form) → its subscriptions.
    by_aor: HashMap<String, BTreeSet<SubId>>,
    /// AoR (index form) → call → line; a user out of every call has no entry.
    lines: HashMap<String, BTreeMap<u64, Line>>,
    /// When each subscription lapses (or, ending, is given up).
    deadlines: BTreeSet<(Instant, SubId)>,
    /// The line changes since [`Input::Lagged`], while a resync is awaited.
    since_lag: Option<Vec<UserState>>,
    out: VecDeque<Output>,
    next: SubId,
}

/// The index form of an AoR: accounts are looked up without regard to case.
fn aor_key(aor: &str) -> String {
    aor.to_lowercase()
}

/// The package named by an Event header value and its `id` parameter.
fn event_of(value: &str) -> (&str, Option<&str>) {
    let mut parts = value.split(';');
    let package = parts.next().unwrap_or("").trim();
    let id = parts.find_map(|p| {
        let (name, v) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("id").then(|| v.trim())
    });
    (package, id)
}

/// True when an Accept header (absent: the package's default) takes the dialog-info body.
fn accepts(req: &Request) -> bool {
    let mut values = req
        .headers
        .values("Accept")
        .flat_map(csps_sip::message::split_list)
        .peekable();
    if values.peek().is_none() {
        return true;
    }
    values.any(|v| {
        let media = v.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case(dialog_info::CONTENT_TYPE)
            || media.eq_ignore_ascii_case("application/*")
            || media == "*/*"
    })
}

/// The checks that need no subscription and no credentials: the package (489 with
/// `Allow-Events`), the Accept header (406), the Expires value (400, 423 with `Min-Expires`).
/// `Ok` is the lifetime to grant (0: fetch or unsubscribe). The answer has no To tag yet.
pub fn check(cfg: &Config, req: &Request) -> Result<u32, Response> {
    let package = req.headers.get("Event").map(|e| event_of(e).0);
    if !package.is_some_and(|p| p.eq_ignore_ascii_case(EVENT)) {
        let mut r = req.response(489, "Bad Event");
        r.headers.push("Allow-Events", EVENT);
        return Err(r);
    }
    if !accepts(req) {
        let mut r = req.response(406, "Not Acceptable");
        r.headers.push("Accept", dialog_info::CONTENT_TYPE);
        return Err(r);
    }
    let expires = match req.headers.get("Expires") {
        None => cfg.default_expires,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(e) => u32::try_from(e).unwrap_or(u32::MAX),
            Err(_) => return Err(req.response(400, "Bad Expires")),
        },
    };
    if expires != 0 && expires < cfg.min_expires {
        let mut r = req.response(423, "Interval Too Brief");
        r.headers.push("Min-Expires", cfg.min_expires.to_string());
        return Err(r);
    }
    Ok(expires.min(cfg.max_expires))
}

/// Applies one user state to `lines`; true when it changed them.
fn apply(lines: &mut HashMap<String, BTreeMap<u64, Line>>, s: &UserState) -> bool {
    let k = aor_key(&s.aor);
    let calls = lines.entry(k.clone()).or_default();
    let new = match s.state {
        LineState::Ringing => Some(DialogState::Early),
        LineState::Busy => Some(DialogState::Confirmed),
        _ => None,
    };
    let changed = match new {
        Some(state) => {
            let line = Line {
                initiator: s.caller,
                state,
                dialog: s.dialog.clone().filter(|_| state == DialogState::Early),
            };
            calls.insert(s.call, line.clone()) != Some(line)
        }
        None => calls.remove(&s.call).is_some(),
    };
    if calls.is_empty() {
        lines.remove(&k);
    }
    changed
}

/// Our Contact on a flow of `transport` from `local`.
fn contact(transport: Transport, local: SocketAddr) -> String {
    match transport {
        Transport::Udp => format!("<sip:csps@{local}>"),
        t => format!("<sip:csps@{local};transport={}>", t.as_str()),
    }
}

impl Watchers {
    /// No subscriptions yet; tags and branches come from `rng`.
    pub fn new(cfg: Config, rng: Box<dyn RngCore + Send>) -> Watchers {
        Watchers {
            cfg,
            rng,
            subs: HashMap::new(),
            by_dialog: HashMap::new(),
            by_aor: HashMap::new(),
            lines: HashMap::new(),
            deadlines: BTreeSet::new(),
            since_lag: None,
            out: VecDeque::new(),
            next: 1,
        }
    }

    /// The lifetimes in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Live subscriptions (those ending are not counted).
    pub fn len(&self) -> usize {
        self.subs.values().filter(|s| s.ending.is_none()).count()
    }

    /// True when nobody watches anyone.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True while lost user states await [`Input::Resync`].
    pub fn resyncing(&self) -> bool {
        self.since_lag.is_some()
    }

    /// The watched AoRs (lower case).
    pub fn watched(&self) -> impl Iterator<Item = &str> {
        self.by_aor.keys().map(String::as_str)
    }

    /// The next answer or NOTIFY to send.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Watchers::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Time passed: lapsed subscriptions end (`reason=timeout`); ending ones whose NOTIFY was
    /// never answered are dropped.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, id));
            match self.subs.get(&id).map(|s| s.ending.is_some()) {
                Some(false) => self.end(now, id, "timeout"),
                Some(true) => self.drop_sub(id),
                None => {}
            }
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Subscribe {
                key,
                from,
                local,
                req,
                aor,
            } => self.subscribe(now, key, from, local, req, aor),
            Input::InDialog { key, from, req } => self.in_dialog(now, key, from, req),
            Input::Line(s) => {
                if let Some(seen) = &mut self.since_lag {
                    seen.push(s.clone());
                }
                if apply(&mut self.lines, &s) {
                    self.notify_watchers(now, &aor_key(&s.aor));
                }
            }
            Input::Lagged => {
                self.since_lag.get_or_insert_with(Vec::new);
            }
            Input::Resync(snapshot) => {
                let Some(seen) = self.since_lag.take() else {
                    return;
                };
                let mut lines = HashMap::new();
                for s in snapshot.iter().chain(&seen) {
                    apply(&mut lines, s);
                }
                let old = std::mem::replace(&mut self.lines, lines);
                let changed: BTreeSet<String> = old
                    .keys()
                    .chain(self.lines.keys())
                    .filter(|k| old.get(*k) != self.lines.get(*k))
                    .cloned()
                    .collect();
                for k in changed {
                    self.notify_watchers(now, &k);
                }
            }
            Input::NotifyAnswered { sub, status } => {
                if matches!(status, 408 | 481) {
                    tracing::debug!(
                        sub,
                        status,
                        "dialog subscription ended by its NOTIFY's answer"
                    );
                    self.drop_sub(sub);
                    return;
                }
                let Some(s) = self.subs.get_mut(&sub) else {
                    return;
                };
                if status >= 300 {
                    tracing::debug!(sub, status, "NOTIFY refused; the subscription stays");
                }
                s.in_flight = false;
                if s.ending.is_some() || s.dirty {
                    self.notify(now, sub);
                }
            }
            Input::NotifyTimedOut { sub } => {
                tracing::debug!(sub, "dialog subscription ended: its NOTIFY got no answer");
                self.drop_sub(sub);
            }
            Input::Gone { aor } => {
                let ids: Vec<SubId> = self
                    .by_aor
                    .get(&aor_key(&aor))
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    self.end(now, id, "noresource");
                }
            }
            Input::Shutdown => {
                let ids: Vec<SubId> = self.subs.keys().copied().collect();
                for id in ids {
                    self.end(now, id, "deactivated");
                }
            }
        }
    }

    fn respond(&mut self, key: TxnKey, resp: Response) {
        self.out.push_back(Output::Respond { key, resp });
    }

    /// The 200 to a SUBSCRIBE of subscription `s`, granting `expires` seconds.
    fn ok(req: &Request, s: &Sub, expires: u32) -> Response {
        let mut r = req.response(200, "OK");
        r.headers.set(
            "To",
            format!("{};tag={}", s.dialog.local_uri, s.dialog.local_tag),
        );
        r.headers.push("Contact", s.dialog.local_contact.clone());
        r.headers.push("Expires", expires.to_string());
        r.headers.push("Allow-Events", EVENT);
        r
    }

    fn subscribe(
        &mut self,
        now: Instant,
        key: TxnKey,
        from: Remote,
        local: SocketAddr,
        req: Request,
        aor: String,
    ) {
        let expires = match check(&self.cfg, &req) {
            Ok(e) => e,
            Err(r) => return self.respond(key, r),
        };
        let dialog_id = match (req.call_id(), req.from_tag()) {
            (Some(c), Some(t)) => (c.to_owned(), t),
            _ => return self.respond(key, req.response(400, "Missing From Tag")),
        };
        // A phone that refreshes with a new SUBSCRIBE on the same Call-ID and From tag (no To
        // tag) refreshes the subscription it has.
        if let Some(&id) = self.by_dialog.get(&dialog_id) {
            if self.subs.get(&id).is_some_and(|s| s.ending.is_none()) {
                return self.refresh(now, key, from, req, id, expires);
            }
            // Its last NOTIFY is on the way: this is a new subscription.
            self.drop_sub(id);
        }
        let local_tag = format!("{:016x}", self.rng.next_u64());
        let Some(dialog) = Dialog::uas(&req, &local_tag, &contact(from.transport, local)) else {
            return self.respond(key, req.response(400, "Missing Contact"));
        };
        let id = self.next;
        self.next += 1;
        let k = aor_key(&aor);
        let sub = Sub {
            dialog,
            to: from,
            via: format!("SIP/2.0/{} {local}", from.transport.via_token()),
            entity: aor,
            key: k.clone(),
            event_id: req
                .headers
                .get("Event")
                .and_then(|e| event_of(e).1)
                .map(str::to_owned),
            expires_at: now + Duration::from_secs(u64::from(expires)),
            version: 0,
            shown: BTreeMap::new(),
            in_flight: false,
            dirty: false,
            ending: None,
        };
        let ok = Self::ok(&req, &sub, expires);
        self.respond(key, ok);
        tracing::info!(sub = id, watched = %sub.entity, expires, "dialog subscription");
        self.subs.insert(id, sub);
        self.by_dialog.insert(dialog_id, id);
        self.by_aor.entry(k).or_default().insert(id);
        if expires == 0 {
            // A fetch (RFC 6665 §4.4.3): the state once, and no subscription.
            self.end(now, id, "timeout");
        } else {
            self.deadlines
                .insert((now + Duration::from_secs(u64::from(expires)), id));
            self.notify(now, id);
        }
    }

    fn in_dialog(&mut self, now: Instant, key: TxnKey, from: Remote, req: Request) {
        let id = req.call_id().zip(req.from_hdr()).and_then(|(c, f)| {
            let id = *self.by_dialog.get(&(c.to_owned(), f.tag()?.to_owned()))?;
            let ours = req.to_hdr()?.tag()? == self.subs.get(&id)?.dialog.local_tag;
            ours.then_some(id)
        });
        let Some(id) = id.filter(|id| self.subs.get(id).is_some_and(|s| s.ending.is_none())) else {
            return self.respond(key, req.response(481, "Subscription Does Not Exist"));
        };
        let expires = match check(&self.cfg, &req) {
            Ok(e) => e,
            Err(r) => return self.respond(key, r),
        };
        self.refresh(now, key, from, req, id, expires);
    }

    /// Subscription `id` renewed for `expires` seconds (0: ended) by `req` from `from`.
    fn refresh(
        &mut self,
        now: Instant,
        key: TxnKey,
        from: Remote,
        req: Request,
        id: SubId,
        expires: u32,
    ) {
        let Some(s) = self.subs.get_mut(&id) else {
            return self.respond(key, req.response(481, "Subscription Does Not Exist"));
        };
        if !s.dialog.accept_remote_seq(&req) {
            return self.respond(key, req.response(500, "CSeq Out of Order"));
        }
        // SUBSCRIBE refreshes the target (RFC 6665 §4.1.2.1); a phone that reconnected is
        // reached on its new flow.
        if let Some(target) = req
            .headers
            .get("Contact")
            .and_then(|c| csps_sip::headers::NameAddr::parse(c).ok())
        {
            s.dialog.remote_target = target.uri;
        }
        s.to = from;
        let ok = Self::ok(&req, s, expires);
        let old = s.expires_at;
        s.expires_at = now + Duration::from_secs(u64::from(expires));
        let new = s.expires_at;
        self.respond(key, ok);
        self.deadlines.remove(&(old, id));
        if expires == 0 {
            tracing::info!(sub = id, "dialog subscription ended by the subscriber");
            self.end(now, id, "timeout");
        } else {
            self.deadlines.insert((new, id));
            self.notify(now, id);
        }
    }

    /// Every subscription watching `key` (an AoR's index form) gets the state.
    fn notify_watchers(&mut self, now: Instant, key: &str) {
        let ids: Vec<SubId> = self
            .by_aor
            .get(key)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.notify(now, id);
        }
    }

    /// Subscription `id` ends with `reason`: its last NOTIFY now, or when the one in flight
    /// is answered.
    fn end(&mut self, now: Instant, id: SubId, reason: &'static str) {
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        if s.ending.is_some() {
            return;
        }
        s.ending = Some(reason);
        self.deadlines.remove(&(s.expires_at, id));
        s.expires_at = now + ENDING_GRACE;
        self.deadlines.insert((s.expires_at, id));
        self.notify(now, id);
    }

    /// Forgets subscription `id` (no NOTIFY).
    fn drop_sub(&mut self, id: SubId) {
        let Some(s) = self.subs.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(s.expires_at, id));
        self.by_dialog
            .remove(&(s.dialog.call_id.clone(), s.dialog.remote_tag.clone()));
        if let Some(set) = self.by_aor.get_mut(&s.key) {
            set.remove(&id);
            if set.is_empty() {
                self.by_aor.remove(&s.key);
            }
        }
    }

    /// Sends subscription `id` its full state (or marks it to be sent when the NOTIFY in
    /// flight is answered); the last one of an ending subscription forgets it.
    fn notify(&mut self, now: Instant, id: SubId) {
        let lines = self.subs.get(&id).and_then(|s| self.lines.get(&s.key));
        let current: Vec<DialogEntry> = lines
            .into_iter()
            .flatten()
            .map(|(call, l)| DialogEntry {
                call: *call,
                initiator: l.initiator,
                state: l.state,
                dialog: l.dialog.clone(),
            })
            .collect();
        let branch = self.rng.next_u64();
        let Some(s) = self.subs.get_mut(&id) else {
            return;
        };
        if s.in_flight {
            s.dirty = true;
            return;
        }
        // The calls shown before and gone since are shown terminated, once.
        let mut dialogs = current.clone();
        for (call, initiator) in &s.shown {
            if !current.iter().any(|d| d.call == *call) {
                dialogs.push(DialogEntry {
                    call: *call,
                    initiator: *initiator,
                    state: DialogState::Terminated,
                    dialog: None,
                });
            }
        }
        dialogs.sort_by_key(|d| d.call);
        let body = dialog_info::document(&s.entity, s.version, &dialogs);
        s.version = s.version.wrapping_add(1);
        s.shown = current.iter().map(|d| (d.call, d.initiator)).collect();
        let state = match s.ending {
            Some(reason) => format!("terminated;reason={reason}"),
            None => {
                let left = s.expires_at.saturating_duration_since(now).as_secs();
                format!("active;expires={left}")
            }
        };
        let via = format!("{};branch=z9hG4bK{branch:016x};rport", s.via);
        let mut req = s.dialog.request(Method::Notify, &via);
        let event = match &s.event_id {
            Some(i) => format!("{EVENT};id={i}"),
            None => EVENT.to_owned(),
        };
        req.headers.push("Event", event);
        req.headers.push("Subscription-State", state);
        req.headers.push("Content-Type", dialog_info::CONTENT_TYPE);
        req.body = body.into_bytes().into();
        s.in_flight = true;
        s.dirty = false;
        let (to, ending) = (s.to, s.ending.is_some());
        self.out.push_back(Output::Notify { sub: id, to, req });
        if ending {
            self.drop_sub(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csps_sip::Message;
    use rand::SeedableRng;

    const PHONE: &str = "192.0.2.7:5060";

    fn remote() -> Remote {
        Remote {
            transport: Transport::Udp,
            addr: PHONE.parse().expect("addr"),
            flow: None,
        }
    }

    fn local() -> SocketAddr {
        "192.0.2.1:5060".parse().expect("addr")
    }

    fn watchers() -> Watchers {
        Watchers::new(
            Config::default(),
            Box::new(rand::rngs::StdRng::seed_from_u64(7)),
        )
    }

    /// A SUBSCRIBE from alice's phone for bob: `to_tag` makes it in-dialog; `extra` are more
    /// header lines.
    fn subscribe(cseq: u32, to_tag: Option<&str>, extra: &str) -> Request {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let text = format!(
            "SUBSCRIBE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bKs{cseq}\r\n\
             From: <sip:alice@csps.local>;tag=w1\r\nTo: <sip:bob@csps.local>{to_tag}\r\n\
             Call-ID: sub-1\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:alice@{PHONE}>\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match csps_sip::parse(text.as_bytes()).expect("parses").message {
            Message::Request(r) => r,
            Message::Response(_) => panic!("a request"),
        }
    }

    /// The server transaction a real transaction layer gives `req`.
    fn key_for(req: &Request) -> TxnKey {
        let mut txns = csps_sip::transaction::Transactions::new(Default::default());
        txns.handle_input(csps_sip::transaction::Input::Receive {
            now: Instant::now(),
            from: remote(),
            msg: Message::Request(req.clone()),
        });
        while let Some(out) = txns.poll_output() {
            if let csps_sip::transaction::Output::Event(csps_sip::transaction::Event::Request {
                key,
                ..
            }) = out
            {
                return key;
            }
        }
        panic!("no request event")
    }

    fn outputs(w: &mut Watchers) -> Vec<Output> {
        std::iter::from_fn(|| w.poll_output()).collect()
    }

    fn new_sub(w: &mut Watchers, now: Instant, req: Request) -> Vec<Output> {
        let key = key_for(&req);
        w.handle(
            now,
            Input::Subscribe {
                key,
                from: remote(),
                local: local(),
                req,
                aor: "sip:bob@csps.local".into(),
            },
        );
        outputs(w)
    }

    fn in_dialog(w: &mut Watchers, now: Instant, req: Request) -> Vec<Output> {
        let key = key_for(&req);
        w.handle(
            now,
            Input::InDialog {
                key,
                from: remote(),
                req,
            },
        );
        outputs(w)
    }

    fn answer(out: &Output) -> &Response {
        match out {
            Output::Respond { resp, .. } => resp,
            other => panic!("an answer expected: {other:?}"),
        }
    }

    fn notify(out: &Output) -> (SubId, &Request) {
        match out {
            Output::Notify { sub, req, to } => {
                assert_eq!(*to, remote());
                (*sub, req)
            }
            other => panic!("a NOTIFY expected: {other:?}"),
        }
    }

    fn body(req: &Request) -> &str {
        std::str::from_utf8(&req.body).expect("UTF-8")
    }

    fn line(aor: &str, call: u64, state: LineState, caller: bool) -> Input {
        Input::Line(UserState {
            aor: aor.into(),
            state,
            call,
            caller,
            dialog: None,
        })
    }

    /// The subscription made by a plain SUBSCRIBE, its first NOTIFY answered; its id and the
    /// gateway's tag.
    fn subscribed(w: &mut Watchers, now: Instant) -> (SubId, String) {
        let out = new_sub(w, now, subscribe(1, None, "Event: dialog\r\n"));
        let tag = answer(&out[0]).to_tag().expect("To tag");
        let (sub, _) = notify(&out[1]);
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        assert!(outputs(w).is_empty());
        (sub, tag)
    }

    /// RFC 6665 §4.2.1.1 / RFC 4235 §4: 200 with the granted Expires, then at once a full-state
    /// NOTIFY in the new dialog (version 0, no dialog for an idle user).
    #[test]
    fn a_subscribe_gets_200_then_a_full_state_notify() {
        let mut w = watchers();
        let now = Instant::now();
        let out = new_sub(
            &mut w,
            now,
            subscribe(1, None, "Event: dialog\r\nExpires: 600\r\n"),
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let ok = answer(&out[0]);
        assert_eq!(ok.status, 200);
        assert_eq!(ok.headers.get("Expires"), Some("600"));
        assert_eq!(ok.headers.get("Contact"), Some("<sip:csps@192.0.2.1:5060>"));
        let tag = ok.to_tag();
        let (_, n) = notify(&out[1]);
        assert_eq!(n.method, Method::Notify);
        assert_eq!(n.uri.to_string(), format!("sip:alice@{PHONE}"));
        assert_eq!(n.headers.get("To"), Some("<sip:alice@csps.local>;tag=w1"));
        assert_eq!(
            n.from_tag(),
            tag,
            "the NOTIFY's From tag is the 200's To tag"
        );
        assert_eq!(n.headers.get("CSeq"), Some("1 NOTIFY"));
        assert_eq!(n.headers.get("Event"), Some("dialog"));
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("active;expires=600")
        );
        assert_eq!(
            n.headers.get("Content-Type"),
            Some("application/dialog-info+xml")
        );
        assert!(
            n.headers
                .get("Via")
                .is_some_and(|v| v.starts_with("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK"))
        );
        assert!(body(n).contains("version=\"0\" state=\"full\" entity=\"sip:bob@csps.local\""));
        assert!(!body(n).contains("<dialog "));
        assert_eq!(w.len(), 1);
        assert_eq!(w.poll_timeout(), Some(now + Duration::from_secs(600)));
    }

    /// 489 with Allow-Events for another package, 406 for an Accept without dialog-info, 423
    /// with Min-Expires under a minute, 400 for a bad Expires; a long Expires is cut to 3600
    /// and none is 3600.
    #[test]
    fn the_package_accept_and_expires_are_checked() {
        let cfg = Config::default();
        let refused = |extra: &str| check(&cfg, &subscribe(1, None, extra)).expect_err(extra);
        let r = refused("Event: presence\r\n");
        assert_eq!(r.status, 489);
        assert_eq!(r.headers.get("Allow-Events"), Some("dialog"));
        assert_eq!(refused("").status, 489, "no Event header");
        let r = refused("Event: dialog\r\nAccept: application/pidf+xml\r\n");
        assert_eq!(r.status, 406);
        let r = refused("Event: dialog\r\nExpires: 30\r\n");
        assert_eq!(r.status, 423);
        assert_eq!(r.headers.get("Min-Expires"), Some("60"));
        assert_eq!(refused("Event: dialog\r\nExpires: soon\r\n").status, 400);
        let ok = |extra: &str| check(&cfg, &subscribe(1, None, extra)).expect(extra);
        assert_eq!(ok("Event: dialog\r\nExpires: 86400\r\n"), 3600);
        assert_eq!(ok("Event: dialog\r\n"), 3600);
        assert_eq!(ok("Event: Dialog;id=3\r\nExpires: 0\r\n"), 0);
        assert_eq!(
            ok("Event: dialog\r\nAccept: application/dialog-info+xml, text/plain\r\n"),
            3600
        );
    }

    /// A callee's ringing is `early`/`recipient`, the answer `confirmed`, the end `terminated`
    /// once; each NOTIFY's version is one up; a change while a NOTIFY is in flight waits for
    /// its answer and then goes as the current state; other users' lines are not sent.
    #[test]
    fn lines_are_notified_in_order_with_rising_versions() {
        let mut w = watchers();
        let now = Instant::now();
        let (sub, _) = subscribed(&mut w, now);
        w.handle(
            now,
            line("sip:Bob@csps.local", 7, LineState::Ringing, false),
        );
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(body(n).contains("version=\"1\""), "{}", body(n));
        assert!(
            body(n).contains(
                "<dialog id=\"call-7\" direction=\"recipient\">\n    <state>early</state>"
            )
        );
        // The answer comes before the NOTIFY's 200: it waits.
        w.handle(now, line("sip:bob@csps.local", 7, LineState::Busy, false));
        w.handle(now, line("sip:carol@csps.local", 8, LineState::Busy, true));
        assert!(outputs(&mut w).is_empty());
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        let out = outputs(&mut w);
        assert_eq!(out.len(), 1);
        let (_, n) = notify(&out[0]);
        assert!(body(n).contains("version=\"2\""));
        assert!(body(n).contains("<state>confirmed</state>"));
        assert_eq!(n.headers.get("CSeq"), Some("3 NOTIFY"));
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        // A repeated state changes nothing.
        w.handle(now, line("sip:bob@csps.local", 7, LineState::Busy, false));
        assert!(outputs(&mut w).is_empty());
        w.handle(now, line("sip:bob@csps.local", 7, LineState::Idle, false));
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(body(n).contains("version=\"3\""));
        assert!(body(n).contains(
            "<dialog id=\"call-7\" direction=\"recipient\">\n    <state>terminated</state>"
        ));
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        w.handle(now, line("sip:bob@csps.local", 9, LineState::Busy, true));
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(!body(n).contains("call-7"), "terminated once: {}", body(n));
        assert!(body(n).contains("<dialog id=\"call-9\" direction=\"initiator\">"));
    }

    /// The ringing device's early dialog, published once its provisional is tagged, goes out
    /// as a new NOTIFY with the identifiers and identities (escaped); the answer shows the
    /// state only again.
    #[test]
    fn a_ringing_line_shows_its_early_dialog_until_answered() {
        let mut w = watchers();
        let now = Instant::now();
        let (sub, _) = subscribed(&mut w, now);
        w.handle(
            now,
            line("sip:bob@csps.local", 7, LineState::Ringing, false),
        );
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(!body(n).contains("call-id="), "no tags yet: {}", body(n));
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        w.handle(
            now,
            Input::Line(UserState {
                dialog: Some(DialogIds {
                    call_id: "b7@gw".into(),
                    local_tag: "dev1".into(),
                    remote_tag: "gw1".into(),
                    remote: "sip:alice@csps.local".into(),
                    remote_name: Some("Alice & Co".into()),
                }),
                ..UserState {
                    aor: "sip:bob@csps.local".into(),
                    state: LineState::Ringing,
                    call: 7,
                    caller: false,
                    dialog: None,
                }
            }),
        );
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        let b = body(n);
        assert!(b.contains("version=\"2\""), "{b}");
        assert!(
            b.contains(
                "<dialog id=\"call-7\" call-id=\"b7@gw\" local-tag=\"dev1\" \
                 remote-tag=\"gw1\" direction=\"recipient\">"
            ),
            "{b}"
        );
        assert!(b.contains("<local><identity>sip:bob@csps.local</identity></local>"));
        assert!(b.contains(
            "<remote><identity display=\"Alice &amp; Co\">sip:alice@csps.local</identity></remote>"
        ));
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        w.handle(now, line("sip:bob@csps.local", 7, LineState::Busy, false));
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(!body(n).contains("call-id="), "{}", body(n));
        assert!(!body(n).contains("<remote>"), "{}", body(n));
    }

    /// A user already in a call when the subscription starts: the first NOTIFY shows it.
    #[test]
    fn the_first_notify_shows_the_calls_already_running() {
        let mut w = watchers();
        let now = Instant::now();
        w.handle(now, line("sip:bob@csps.local", 4, LineState::Busy, true));
        let out = new_sub(&mut w, now, subscribe(1, None, "Event: dialog;id=x9\r\n"));
        let (_, n) = notify(&out[1]);
        assert!(body(n).contains("<dialog id=\"call-4\" direction=\"initiator\">"));
        assert!(body(n).contains("<state>confirmed</state>"));
        assert_eq!(
            n.headers.get("Event"),
            Some("dialog;id=x9"),
            "the id is echoed"
        );
    }

    /// A refresh in the dialog renews the lifetime and sends the state again; an old CSeq is
    /// 500, another tag 481; `Expires: 0` ends it with `terminated;reason=timeout`, after which
    /// the dialog is gone (481).
    #[test]
    fn refresh_and_unsubscribe_in_the_dialog() {
        let mut w = watchers();
        let t0 = Instant::now();
        let (_, tag) = subscribed(&mut w, t0);
        let t1 = t0 + Duration::from_secs(1800);
        let out = in_dialog(
            &mut w,
            t1,
            subscribe(2, Some(&tag), "Event: dialog\r\nExpires: 3600\r\n"),
        );
        assert_eq!(answer(&out[0]).status, 200);
        assert_eq!(answer(&out[0]).headers.get("Expires"), Some("3600"));
        let (sub, n) = notify(&out[1]);
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("active;expires=3600")
        );
        assert!(body(n).contains("version=\"1\""));
        w.handle(t1, Input::NotifyAnswered { sub, status: 200 });
        assert_eq!(w.poll_timeout(), Some(t1 + Duration::from_secs(3600)));
        let out = in_dialog(&mut w, t1, subscribe(2, Some(&tag), "Event: dialog\r\n"));
        assert_eq!(answer(&out[0]).status, 500);
        let out = in_dialog(&mut w, t1, subscribe(3, Some("other"), "Event: dialog\r\n"));
        assert_eq!(answer(&out[0]).status, 481);
        let out = in_dialog(
            &mut w,
            t1,
            subscribe(3, Some(&tag), "Event: dialog\r\nExpires: 0\r\n"),
        );
        assert_eq!(answer(&out[0]).status, 200);
        assert_eq!(answer(&out[0]).headers.get("Expires"), Some("0"));
        let (_, n) = notify(&out[1]);
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("terminated;reason=timeout")
        );
        assert!(w.is_empty());
        assert_eq!(w.poll_timeout(), None);
        let out = in_dialog(&mut w, t1, subscribe(4, Some(&tag), "Event: dialog\r\n"));
        assert_eq!(answer(&out[0]).status, 481);
    }

    /// Without a refresh the subscription lapses: a last NOTIFY `terminated;reason=timeout`.
    #[test]
    fn a_subscription_not_refreshed_lapses() {
        let mut w = watchers();
        let t0 = Instant::now();
        let out = new_sub(
            &mut w,
            t0,
            subscribe(1, None, "Event: dialog\r\nExpires: 120\r\n"),
        );
        let (sub, _) = notify(&out[1]);
        w.handle(t0, Input::NotifyAnswered { sub, status: 200 });
        w.handle_timeout(t0 + Duration::from_secs(119));
        assert!(outputs(&mut w).is_empty());
        w.handle_timeout(t0 + Duration::from_secs(120));
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("terminated;reason=timeout")
        );
        assert!(w.is_empty());
    }

    /// A NOTIFY answered 481 or 408, or not answered, ends the subscription without another
    /// NOTIFY; another refusal leaves it.
    #[test]
    fn a_failed_notify_ends_the_subscription() {
        for (status, stays) in [
            (Some(481), false),
            (Some(408), false),
            (None, false),
            (Some(500), true),
        ] {
            let mut w = watchers();
            let now = Instant::now();
            let out = new_sub(&mut w, now, subscribe(1, None, "Event: dialog\r\n"));
            let (sub, _) = notify(&out[1]);
            match status {
                Some(status) => w.handle(now, Input::NotifyAnswered { sub, status }),
                None => w.handle(now, Input::NotifyTimedOut { sub }),
            }
            assert!(outputs(&mut w).is_empty());
            assert_eq!(w.len(), usize::from(stays), "{status:?}");
            w.handle(
                now,
                line("sip:bob@csps.local", 1, LineState::Ringing, false),
            );
            assert_eq!(outputs(&mut w).len(), usize::from(stays), "{status:?}");
        }
    }

    /// A deleted user: `terminated;reason=noresource`, after the NOTIFY in flight is answered.
    #[test]
    fn a_deleted_user_ends_its_subscriptions() {
        let mut w = watchers();
        let now = Instant::now();
        let out = new_sub(&mut w, now, subscribe(1, None, "Event: dialog\r\n"));
        let (sub, _) = notify(&out[1]);
        assert_eq!(w.watched().collect::<Vec<_>>(), ["sip:bob@csps.local"]);
        w.handle(
            now,
            Input::Gone {
                aor: "sip:BOB@csps.local".into(),
            },
        );
        assert!(
            outputs(&mut w).is_empty(),
            "the first NOTIFY is still in flight"
        );
        assert!(w.is_empty(), "an ending subscription is not counted");
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("terminated;reason=noresource")
        );
        assert_eq!(w.poll_timeout(), None);
        assert_eq!(w.watched().count(), 0);
    }

    /// `Expires: 0` on a new SUBSCRIBE fetches the state once: 200, one terminated NOTIFY, no
    /// subscription.
    #[test]
    fn expires_zero_fetches_the_state_once() {
        let mut w = watchers();
        let now = Instant::now();
        let out = new_sub(
            &mut w,
            now,
            subscribe(1, None, "Event: dialog\r\nExpires: 0\r\n"),
        );
        assert_eq!(answer(&out[0]).headers.get("Expires"), Some("0"));
        let (_, n) = notify(&out[1]);
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("terminated;reason=timeout")
        );
        assert!(body(n).contains("version=\"0\""));
        assert!(w.is_empty());
        assert_eq!(w.poll_timeout(), None);
    }

    /// Lost user states: the snapshot taken after the lag replaces the lines, the changes seen
    /// since go on top, and only the users whose lines differ are notified.
    #[test]
    fn a_resync_after_lost_states_corrects_the_lines() {
        let mut w = watchers();
        let now = Instant::now();
        let (sub, _) = subscribed(&mut w, now);
        // Call 3 was shown ringing; its end was lost.
        w.handle(
            now,
            line("sip:bob@csps.local", 3, LineState::Ringing, false),
        );
        let (sub2, _) = notify(&outputs(&mut w)[0]);
        assert_eq!(sub2, sub);
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        w.handle(now, Input::Lagged);
        // Seen after the lag: call 5 rings, then is answered.
        w.handle(
            now,
            line("sip:bob@csps.local", 5, LineState::Ringing, false),
        );
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(body(n).contains("call-3") && body(n).contains("call-5"));
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        w.handle(now, line("sip:bob@csps.local", 5, LineState::Busy, false));
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert!(body(n).contains("<state>confirmed</state>"));
        w.handle(now, Input::NotifyAnswered { sub, status: 200 });
        // The snapshot (taken before call 5's answer) knows no call 3.
        let snapshot = vec![UserState {
            aor: "sip:bob@csps.local".into(),
            state: LineState::Ringing,
            call: 5,
            caller: false,
            dialog: None,
        }];
        w.handle(now, Input::Resync(snapshot));
        let out = outputs(&mut w);
        assert_eq!(out.len(), 1, "{out:?}");
        let (_, n) = notify(&out[0]);
        assert!(body(n).contains(
            "<dialog id=\"call-3\" direction=\"recipient\">\n    <state>terminated</state>"
        ));
        assert!(body(n).contains(
            "<dialog id=\"call-5\" direction=\"recipient\">\n    <state>confirmed</state>"
        ));
        // A resync nobody asked for changes nothing.
        w.handle(now, Input::Resync(Vec::new()));
        assert!(outputs(&mut w).is_empty());
    }

    /// The server stops: `terminated;reason=deactivated`.
    #[test]
    fn shutdown_deactivates_every_subscription() {
        let mut w = watchers();
        let now = Instant::now();
        subscribed(&mut w, now);
        w.handle(now, Input::Shutdown);
        let out = outputs(&mut w);
        let (_, n) = notify(&out[0]);
        assert_eq!(
            n.headers.get("Subscription-State"),
            Some("terminated;reason=deactivated")
        );
        assert!(w.is_empty());
    }
}
