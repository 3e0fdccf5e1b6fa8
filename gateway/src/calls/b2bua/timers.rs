//! What is due when: no answer, 2xx retransmission, linger, transfer deadline, session timer.

use std::time::{Duration, Instant};

use csps_sip::{Headers, Response};

use super::{Call, EndReason, MIN_SE, Output, Phase, SESSION_EXPIRED, T2, TEAMS_SESSION_EXPIRES};
use crate::calls::rel1xx::{NoPrack, Rel1xx};

/// `Session-Expires` (RFC 4028 §4): the interval in seconds and the `refresher` parameter.
pub(crate) fn session_expires(h: &Headers) -> Option<(u32, Option<String>)> {
    let v = h.get("Session-Expires")?;
    let mut parts = v.split(';');
    let secs = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| v.trim().to_ascii_lowercase())
    });
    Some((secs, refresher))
}

/// True when `h` lists the `timer` option tag in Supported (or its compact form `k`).
pub(crate) fn supports_timer(h: &Headers) -> bool {
    h.values("Supported")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("timer"))
}

/// Direct Routing expects session timers: a new leg to Teams whose other side asked none
/// offers ours, and Teams refreshes (the gateway relays refreshes).
pub(crate) fn teams_timer(h: &mut Headers) {
    h.push(
        "Session-Expires",
        format!("{TEAMS_SESSION_EXPIRES};refresher=uas"),
    );
    h.push("Min-SE", MIN_SE.to_string());
    h.push("Supported", "timer");
}

/// Session-timer headers copied from one leg's message to the other's (refreshes and their
/// answers pass through unchanged, so the phones keep negotiating with each other).
pub(super) fn copy_timer_headers(from: &Headers, to: &mut Headers) {
    for name in ["Session-Expires", "Min-SE"] {
        if let Some(v) = from.get(name) {
            to.set(name, v.to_owned());
        }
    }
    if supports_timer(from) {
        to.push("Supported", "timer");
    }
}

impl Call {
    /// RFC 4028 §9 for the 2xx to the caller: the callee's negotiated interval and refresher
    /// when it sent one, else (a caller that supports timers and asked for them) the caller's
    /// interval with the caller as refresher; the gateway then times the session.
    pub(super) fn start_session_timer(
        &mut self,
        now: Instant,
        b_ok: &Response,
        a_ok: &mut Response,
    ) {
        let inv = &self.setup.invite.headers;
        let negotiated = match session_expires(&b_ok.headers) {
            Some((se, refresher)) => Some((se.max(MIN_SE), refresher.unwrap_or("uas".into()))),
            None if supports_timer(inv) => {
                session_expires(inv).map(|(se, _)| (se.max(MIN_SE), "uac".to_owned()))
            }
            None => None,
        };
        let Some((se, refresher)) = negotiated else {
            return;
        };
        a_ok.headers
            .push("Session-Expires", format!("{se};refresher={refresher}"));
        if supports_timer(inv) {
            a_ok.headers.push("Require", "timer");
        }
        let interval = Duration::from_secs(u64::from(se));
        self.session = Some((interval, now + interval));
    }

    /// A session refresh went through (a relayed re-INVITE/UPDATE answered 2xx, or an UPDATE
    /// without offer): the session lives another interval, the one in the 2xx when it names one.
    pub(super) fn refreshed(&mut self, now: Instant, ok: Option<&Response>) {
        if let Some((interval, deadline)) = self.session.as_mut() {
            if let Some((se, _)) = ok.and_then(|r| session_expires(&r.headers)) {
                *interval = Duration::from_secs(u64::from(se.max(MIN_SE)));
            }
            *deadline = now + *interval;
        }
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.rel1xx.as_mut().map(|r| r.handle_timeout(now)) {
            Some(Ok(Some(resp))) => self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp,
            }),
            Some(Err(NoPrack)) => self.no_prack(now),
            _ => {}
        }
        if let Some(d) = self.ring_deadline
            && d <= now
        {
            self.ring_deadline = None;
            if self.phase == Phase::Ringing {
                self.ending(EndReason::NoAnswer);
                self.hang_up(now, Some(480));
            }
        }
        if let Some((at, interval, give_up)) = self.a_ok_next
            && at <= now
        {
            if now >= give_up {
                // §13.3.1.4: no ACK within 64·T1: confirm and end the session.
                self.a_ok_next = None;
                self.a_ok = None;
                self.phase = Phase::Confirmed;
                self.ending(EndReason::NoAck);
                self.hang_up(now, None);
            } else if let Some(ok) = self.a_ok.clone() {
                self.out.push_back(Output::Respond {
                    key: self.setup.key,
                    resp: ok,
                });
                let next = (interval * 2).min(T2);
                self.a_ok_next = Some((now + next, next, give_up));
            }
        }
        if let Some(d) = self.linger_deadline
            && d <= now
            && self.phase == Phase::Ending
            && self.moving.is_none()
        {
            self.finish();
        }
        if let Some((key, a)) = self.replacement.as_mut()
            && let Some((at, interval, give_up)) = a.next
            && at <= now
        {
            if now >= give_up {
                // No ACK from the replacing phone: it keeps the call (as for a lost ACK of a
                // relayed re-INVITE), the retransmissions stop. An offerless one has no
                // media without the ACK's answer: its dialog is ended (§13.3.1.4).
                self.replacement = None;
                if let Some(j) = self.joining.take() {
                    self.bye_joining(j.phone);
                    self.end_check();
                }
            } else {
                let next = (interval * 2).min(T2);
                a.next = Some((now + next, next, give_up));
                let (key, resp) = (*key, a.resp.clone());
                self.out.push_back(Output::Respond { key, resp });
            }
        }
        if self.transfer.as_ref().is_some_and(|t| t.deadline <= now) {
            // The target's devices rang long enough: the transferor hears 480.
            self.fail_transfer(now, 480);
        }
        if let Some((_, deadline)) = self.session
            && deadline <= now
            && self.is_answered()
        {
            // RFC 4028 §10: nobody refreshed the session in time; it is over.
            tracing::info!("session timer expired: hanging up");
            self.session = None;
            self.bye_reason = Some(SESSION_EXPIRED);
            self.ending(EndReason::SessionExpired);
            self.hang_up(now, None);
        }
        let due = self
            .reoffer
            .as_ref()
            .and_then(|p| p.answered.as_ref())
            .and_then(|a| a.next)
            .filter(|n| n.0 <= now);
        if let Some((_, interval, give_up)) = due {
            if now >= give_up {
                // No ACK: the modification is over; the call goes on (§13.3.1.4 says end the
                // session, but a lost ACK to a hold should not cost the user the call).
                self.reoffer = None;
            } else if let Some(p) = self.reoffer.as_mut()
                && let Some(a) = p.answered.as_mut()
            {
                let next = (interval * 2).min(T2);
                a.next = Some((now + next, next, give_up));
                self.out.push_back(Output::Respond {
                    key: p.key,
                    resp: a.resp.clone(),
                });
            }
        }
    }

    /// When to call [`Call::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ring_deadline,
            self.a_ok_next.map(|x| x.0),
            self.linger_deadline.filter(|_| self.phase == Phase::Ending),
            self.reoffer
                .as_ref()
                .and_then(|p| p.answered.as_ref())
                .and_then(|a| a.next.map(|n| n.0)),
            self.session
                .filter(|_| self.is_answered())
                .map(|(_, deadline)| deadline),
            self.transfer.as_ref().map(|t| t.deadline),
            self.replacement
                .as_ref()
                .and_then(|(_, a)| a.next.map(|n| n.0)),
            self.rel1xx.as_ref().and_then(Rel1xx::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
