//! Busy-lamp fields: the SIP dialog event package (RFC 6665 + RFC 4235) that desk phones and
//! DECT bases subscribe to (`SUBSCRIBE sip:bob@domain`, `Event: dialog`) to light a key per
//! colleague. [`watchers`] is the sans-IO core (subscriptions, their dialogs, expiry, NOTIFY
//! versions, the watched users' lines), [`dialog_info`] the XML body; [`Blf`] is the glue the
//! SIP core task drives: it authenticates a new SUBSCRIBE as an INVITE is (digest 407, or a
//! trusted range), finds the watched account, and carries the core's answers and NOTIFYs onto
//! the transaction layer (NOTIFYs go as client transactions over the subscriber's flow).
//!
//! The lines come from the call core's user-state bus: ringing for a callee whose devices ring
//! (`early`, direction `recipient`), busy in an answered call (`confirmed`), idle when it ends
//! (`terminated`, once). Once a ringing device sent a tagged provisional, the early dialog also
//! carries that device's dialog with the gateway (`call-id`, `local-tag`, `remote-tag`) and the
//! caller as remote identity: a BLF key picks the call up with an INVITE whose
//! `Replaces: call-id;to-tag=remote-tag;from-tag=local-tag;early-only` names it (the gateway
//! takes the two tags in either order). A resync after lost states shows ringing without them
//! until the next change. In a cluster each server reports its own calls only: a phone
//! subscribed to one server does not see a colleague's call through another.

pub mod dialog_info;
pub mod watchers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use csps_sip::registrar::{Accounts, Registrar};
use csps_sip::transaction::{Transactions, TxnKey};
use csps_sip::{Remote, Request, Response, SipHeaders};
use rand::rngs::StdRng;

use crate::calls::{CallInfo, LegKind, LineState, UserState};
use crate::metrics::Metrics;
use crate::sip::accounts::AccountCache;
use watchers::{Config, Input, Output, SubId, Watchers};

/// The SIP core's side of busy-lamp fields: the subscriptions and the NOTIFY transactions.
pub struct Blf {
    core: Watchers,
    /// NOTIFY client transactions → their subscription.
    notifies: HashMap<TxnKey, SubId>,
}

/// What a new SUBSCRIBE borrows from the SIP core.
pub struct SubscribeCx<'a> {
    /// Authentication (nonces, limiter, trusted ranges).
    pub registrar: &'a mut Registrar,
    /// The accounts (the watcher's and the watched user's).
    pub accounts: &'a AccountCache,
    /// Randomness for the challenge.
    pub rng: &'a mut StdRng,
    /// The gateway's address on the subscriber's flow.
    pub local: SocketAddr,
}

/// The account (username, domain) a SUBSCRIBE's Request-URI names in `domain`: by username, or
/// by the account's phone number.
fn watched(req: &Request, domain: &str, accounts: &AccountCache) -> Option<(String, String)> {
    let user = csps_sip::registrar::percent_decode(req.uri.user.as_deref()?).into_owned();
    if accounts.lookup(&user, domain).is_some() {
        return Some((user, domain.to_owned()));
    }
    accounts
        .by_number(&crate::policy::rules::dial_string(&user))
        .filter(|(_, d)| d.eq_ignore_ascii_case(domain))
        .map(|(u, d)| (u.to_owned(), d.to_owned()))
}

/// The lines of the running calls as the call tasks publish them: a ringing call's phones
/// early (the caller dialling, the callee ringing), an answered call's phones busy (the
/// caller's leg first), a room's participants busy.
pub fn lines_of(calls: &[CallInfo]) -> Vec<UserState> {
    let mut out = Vec::new();
    for c in calls {
        let answered = c.answered_at.is_some();
        let room = c.conference.is_some();
        for (i, leg) in c.legs.iter().enumerate() {
            let state = match (answered || room, i) {
                (true, _) => LineState::Busy,
                (false, 0 | 1) => LineState::Ringing,
                (false, _) => continue,
            };
            if leg.kind == LegKind::Phone {
                out.push(UserState {
                    aor: leg.party.clone(),
                    state,
                    call: c.id,
                    caller: room || i == 0,
                    dialog: None,
                });
            }
        }
    }
    out
}

impl Blf {
    /// No subscriptions yet; tags and branches come from `rng`.
    pub fn new(rng: StdRng) -> Blf {
        Blf {
            core: Watchers::new(Config::default(), Box::new(rng)),
            notifies: HashMap::new(),
        }
    }

    /// A SUBSCRIBE outside a call: in a subscription's dialog (To tag) it refreshes or ends
    /// it; a new one is checked (489, 406, 423), authenticated (407, 403) and must name an
    /// account of the watcher's domain (404). `Some` is a refusal for the caller to send (a To
    /// tag is added there when missing); everything else leaves through [`Blf::drain`].
    pub fn on_subscribe(
        &mut self,
        now: Instant,
        cx: SubscribeCx<'_>,
        key: TxnKey,
        from: Remote,
        req: Request,
    ) -> Option<Response> {
        if req.to_hdr().is_some_and(|t| t.tag().is_some()) {
            self.core.handle(now, Input::InDialog { key, from, req });
            return None;
        }
        // Cheap refusals first: they cost no nonce and tell nothing about accounts.
        if let Err(r) = watchers::check(self.core.config(), &req) {
            return Some(r);
        }
        let (_, domain) =
            match cx
                .registrar
                .authorize(SystemTime::now(), &req, from, cx.accounts, cx.rng)
            {
                Ok(who) => who,
                Err(r) => return Some(r),
            };
        let Some((user, domain)) = watched(&req, &domain, cx.accounts) else {
            return Some(req.response(404, "Not Found"));
        };
        let aor = csps_sip::registrar::aor(&user, &domain);
        // A wildcard listener: the address the kernel uses towards the phone goes into Via and
        // Contact.
        let mut local = cx.local;
        if local.ip().is_unspecified()
            && let Some(ip) = crate::media::local_ip_towards(from.addr.ip())
        {
            local.set_ip(ip);
        }
        self.core.handle(
            now,
            Input::Subscribe {
                key,
                from,
                local,
                req,
                aor,
            },
        );
        None
    }

    /// A line changed on the user-state bus.
    pub fn on_user_state(&mut self, now: Instant, state: UserState) {
        self.core.handle(now, Input::Line(state));
    }

    /// User states were lost; true when a snapshot of the running calls should now be taken
    /// for [`Blf::on_resync`] (once per lag).
    pub fn on_lagged(&mut self, now: Instant) -> bool {
        let first = !self.core.resyncing();
        self.core.handle(now, Input::Lagged);
        first
    }

    /// The lines of the running calls ([`lines_of`]), taken after [`Blf::on_lagged`].
    pub fn on_resync(&mut self, now: Instant, lines: Vec<UserState>) {
        self.core.handle(now, Input::Resync(lines));
    }

    /// The accounts changed: the watchers of a deleted user are told `noresource`.
    pub fn on_accounts(&mut self, now: Instant, accounts: &AccountCache) {
        let gone: Vec<String> = self
            .core
            .watched()
            .filter(|aor| {
                let exists = aor
                    .strip_prefix("sip:")
                    .and_then(|a| a.rsplit_once('@'))
                    .is_some_and(|(u, d)| accounts.lookup(u, d).is_some());
                !exists
            })
            .map(str::to_owned)
            .collect();
        for aor in gone {
            tracing::info!(watched = %aor, "the watched user is gone: its subscriptions end");
            self.core.handle(now, Input::Gone { aor });
        }
    }

    /// The server stops: every subscriber is told `deactivated`.
    pub fn shutdown(&mut self, now: Instant) {
        self.core.handle(now, Input::Shutdown);
    }

    /// The final answer to a client transaction; false when it is not a NOTIFY of ours.
    pub fn on_response(&mut self, now: Instant, key: TxnKey, resp: &Response) -> bool {
        let Some(&sub) = self.notifies.get(&key) else {
            return false;
        };
        if resp.status >= 200 {
            self.notifies.remove(&key);
            let status = resp.status;
            self.core.handle(now, Input::NotifyAnswered { sub, status });
        }
        true
    }

    /// A client transaction timed out; false when it is not a NOTIFY of ours.
    pub fn on_timeout(&mut self, now: Instant, key: TxnKey) -> bool {
        let Some(sub) = self.notifies.remove(&key) else {
            return false;
        };
        self.core.handle(now, Input::NotifyTimedOut { sub });
        true
    }

    /// A transaction ended: forget it.
    pub fn on_terminated(&mut self, key: TxnKey) {
        self.notifies.remove(&key);
    }

    /// Time passed.
    pub fn on_timer(&mut self, now: Instant) {
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
    }

    /// When [`Blf::on_timer`] is next due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// Sends what the core asked for: answers on their server transactions, NOTIFYs as client
    /// transactions (one that cannot start counts as unanswered).
    pub fn drain(&mut self, now: Instant, txns: &mut Transactions, metrics: &Metrics) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Respond { key, resp } => {
                    if let Err(e) = txns.respond(now, &key, resp) {
                        tracing::debug!(%key, "SUBSCRIBE not answered: {e}");
                    }
                }
                Output::Notify { sub, to, req } => match txns.send_request(now, to, req) {
                    Ok(key) => {
                        self.notifies.insert(key, sub);
                    }
                    Err(e) => {
                        tracing::debug!(sub, "NOTIFY not sent: {e}");
                        self.core.handle(now, Input::NotifyTimedOut { sub });
                    }
                },
            }
        }
        metrics.dialog_subscriptions.set(self.core.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::LegInfo;

    fn leg(kind: LegKind, party: &str) -> LegInfo {
        LegInfo {
            kind,
            party: party.into(),
            signalling: String::new(),
            media: None,
            codec: None,
            srtp: false,
            counters: Default::default(),
            music_on_hold: false,
        }
    }

    fn call(id: u64, answered: bool, conference: Option<&str>, legs: Vec<LegInfo>) -> CallInfo {
        CallInfo {
            id,
            state: if answered { "answered" } else { "ringing" },
            started_at: chrono::Utc::now(),
            answered_at: answered.then(chrono::Utc::now),
            duration_secs: 0,
            emergency: false,
            routing_policy: None,
            quirks_policy: None,
            conference: conference.map(str::to_owned),
            legs,
        }
    }

    /// The running calls' lines as the call tasks publish them: a ringing call's phone callee
    /// rings, an answered call's phones are busy, Teams parties are not users, a room's
    /// participants are busy callers.
    #[test]
    fn lines_of_the_running_calls() {
        let state = |aor: &str, state, call, caller| UserState {
            aor: aor.into(),
            state,
            call,
            caller,
            dialog: None,
        };
        let calls = [
            call(
                1,
                false,
                None,
                vec![
                    leg(LegKind::Phone, "sip:a@x"),
                    leg(LegKind::Phone, "sip:b@x"),
                ],
            ),
            call(
                2,
                true,
                None,
                vec![
                    leg(LegKind::Teams, "sip:+1555@sbc"),
                    leg(LegKind::Phone, "sip:c@x"),
                ],
            ),
            call(
                3,
                true,
                Some("room"),
                vec![
                    leg(LegKind::Phone, "sip:d@x"),
                    leg(LegKind::Phone, "sip:e@x"),
                ],
            ),
        ];
        assert_eq!(
            lines_of(&calls),
            [
                state("sip:a@x", LineState::Ringing, 1, true),
                state("sip:b@x", LineState::Ringing, 1, false),
                state("sip:c@x", LineState::Busy, 2, false),
                state("sip:d@x", LineState::Busy, 3, true),
                state("sip:e@x", LineState::Busy, 3, true),
            ]
        );
    }
}
