//! Ringing the callee: one INVITE per device, provisionals and PRACK, the answer that wins.

use std::time::Instant;

use bytes::Bytes;
use csps_sip::dialog::{self, Dialog};
use csps_sip::sdp::{self, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Remote, Request, Response, SipHeaders};
use rand::RngCore;

use super::messages::{allow_for, is_sdp, new_invite, via};
use super::timers::{session_expires, supports_timer, teams_timer};
use super::{
    COMPLETED_ELSEWHERE, Call, EndReason, Fork, ForkState, LINGER, MIN_SE, MediaChange, NO_ANSWER,
    Output, Phase, T1,
};
use crate::calls::codecs;
use crate::calls::rel1xx::{self, Rel1xx};
use crate::calls::sdes::LegSrtp;

/// The ACK for a 2xx to fork `f`'s INVITE, and whether it was the first 2xx (which makes the
/// fork's dialog); every 2xx, retransmissions too, is ACKed with a new branch (§13.2.2.4).
/// `None` when the 2xx cannot make a dialog.
pub(super) fn ack_answer(
    f: &mut Fork,
    resp: &Response,
    rng: &mut dyn RngCore,
) -> Option<(bool, Remote, Request)> {
    let first = f.dialog.is_none();
    if first {
        f.dialog = Dialog::uac(&f.invite, resp);
    }
    let d = f.dialog.as_ref()?;
    let v = via(&f.target, rng);
    Some((first, f.target.to, d.ack(1, &v)))
}

/// Marks fork `f` cancelled (with an RFC 3326 `reason`) and returns its CANCEL when it may be
/// sent now; §9.1: no CANCEL before a provisional, it is sent when one arrives.
pub(super) fn cancel_fork(f: &mut Fork, reason: Option<&'static str>) -> Option<(Remote, Request)> {
    match f.state {
        ForkState::Proceeding => {
            f.cancel = Some(reason.unwrap_or(""));
            Some((f.target.to, dialog::cancel(&f.invite, reason)))
        }
        ForkState::Calling => {
            f.cancel = Some(reason.unwrap_or(""));
            None
        }
        _ => None,
    }
}

/// When every fork has a final refusal: the one to pass on ([`best_final`]).
pub(super) fn all_refused(forks: &[Fork]) -> Option<u16> {
    let mut statuses = Vec::with_capacity(forks.len());
    for f in forks {
        match f.state {
            ForkState::Done(s) => statuses.push(s),
            _ => return None,
        }
    }
    Some(best_final(statuses.into_iter()))
}

/// The answer the caller gets when no device answered (RFC 3261 §16.7 step 6, as phones expect:
/// busy wins over the rest, 6xx over everything, unreachable devices read as 480).
fn best_final(statuses: impl Iterator<Item = u16>) -> u16 {
    let mut best: Option<u16> = None;
    let rank = |s: u16| match s {
        600..=699 => 0,
        486 => 1,
        480 | 408 | 500..=599 => 4,
        487 => 5,
        400..=499 => 2,
        _ => 6,
    };
    for s in statuses {
        if best.is_none_or(|b| rank(s) < rank(b)) {
            best = Some(s);
        }
    }
    best.filter(|s| !matches!(s, 408 | 480 | 500..=599))
        .unwrap_or(480)
}

impl Call {
    /// Checks the caller's offer and rings every target.
    pub fn start(&mut self, now: Instant) {
        let invite = &self.setup.invite;
        if !invite.body.is_empty() && !is_sdp(&invite.headers, &invite.body) {
            let mut r = self.a_response(415, "Unsupported Media Type");
            r.headers.push("Accept", "application/sdp");
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.ending(EndReason::Rejected);
            self.end_or_linger();
            return;
        }
        if rel1xx::requires(&invite.headers, "100rel") {
            let cseq = invite.cseq().map_or(1, |c| c.seq);
            self.rel1xx = Some(Rel1xx::new(cseq, self.rng.next_u32() >> 1));
        }
        self.offerless = invite.body.is_empty();
        if let Some((se, _)) = session_expires(&invite.headers)
            && se < MIN_SE
            && supports_timer(&invite.headers)
        {
            // RFC 4028 §8.1: too short an interval from a UAC that knows timers.
            let mut r = self.a_response(422, "Session Interval Too Small");
            r.headers.push("Min-SE", MIN_SE.to_string());
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.ending(EndReason::Rejected);
            self.end_or_linger();
            return;
        }
        if self.offerless {
            self.respond_trying();
        } else {
            let mut offer = match Sdp::parse(&invite.body) {
                Ok(s) => s,
                Err(e) => {
                    self.reject(400, Some(&format!("bad SDP: {e}")));
                    return;
                }
            };
            if let Err(e) = self.take_sdes(true, self.srtp_rule(true), &mut offer, true) {
                self.reject(e.status(), Some(&e.to_string()));
                return;
            }
            let a_sdp_addr = offer.audio_index().and_then(|i| offer.rtp_addr(i));
            let idx = match self.offer_onwards(true, &mut offer) {
                Ok((i, origin)) => {
                    self.a_origin = Some(origin);
                    i
                }
                Err(e) => {
                    self.reject(e.status(), Some(&e.to_string()));
                    return;
                }
            };
            self.respond_trying();
            self.out.push_back(Output::Media(MediaChange::A(
                a_sdp_addr,
                self.setup.from.addr.ip(),
            )));
            sdp::rewrite_address(&mut offer, idx, self.setup.relay_b);
            self.b_offer = Some(offer);
        }
        for target in self.setup.targets.clone() {
            let tag = self.tag();
            // Each device is offered SRTP by its own rule (its transport).
            let body = match &self.b_offer {
                Some(o) => {
                    let o = self.offer_for(target.sbc.is_none(), o);
                    self.offer_body(false, self.target_rule(&target), &o)
                }
                None => Bytes::new(),
            };
            let mut req = new_invite(
                &target,
                &self.setup.caller,
                &self.b_from_tag,
                &self.setup.callee,
                &self.setup.b_call_id,
                body,
                &mut *self.rng,
            );
            let h = &mut req.headers;
            let caller_timer = session_expires(&self.setup.invite.headers).is_some();
            if target.sbc.is_some() && !caller_timer {
                teams_timer(h);
            }
            if let Some((se, _)) = session_expires(&self.setup.invite.headers) {
                // The caller asked for session timers: the callee negotiates them with it
                // through the gateway (an interval below ours is raised, §7.4).
                h.push("Session-Expires", se.max(MIN_SE).to_string());
                let min = self
                    .setup
                    .invite
                    .headers
                    .get("Min-SE")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(MIN_SE)
                    .max(MIN_SE);
                h.push("Min-SE", min.to_string());
            }
            if supports_timer(&self.setup.invite.headers) {
                h.push("Supported", "timer");
            }
            self.out.push_back(Output::Send {
                tag,
                to: target.to,
                req: req.clone(),
            });
            self.forks.push(Fork {
                tag,
                target,
                invite: req,
                state: ForkState::Calling,
                cancel: None,
                dialog: None,
                early_tags: Vec::new(),
            });
        }
        self.ring_deadline = Some(now + NO_ANSWER);
    }

    /// 100 at once (RFC 3261 §16.2 as a proxy would): the answer depends on other phones, and
    /// the caller should stop retransmitting now rather than after the 200 ms timer.
    fn respond_trying(&mut self) {
        let trying = self.a_response(100, "Trying");
        self.out.push_back(Output::Respond {
            key: self.setup.key,
            resp: trying,
        });
    }

    pub(super) fn cancel_forks(&mut self, now: Instant, reason: Option<&'static str>) {
        let _ = now;
        for i in 0..self.forks.len() {
            if Some(i) == self.winner {
                continue;
            }
            if let Some((to, req)) = cancel_fork(&mut self.forks[i], reason) {
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
            }
        }
    }

    pub(super) fn on_provisional(&mut self, now: Instant, i: usize, resp: Response) {
        let f = &mut self.forks[i];
        if let Some(tag) = resp.to_tag()
            && !f.early_tags.contains(&tag)
        {
            f.early_tags.push(tag);
        }
        if f.state == ForkState::Calling {
            f.state = ForkState::Proceeding;
            if let Some(reason) = f.cancel {
                let reason = (!reason.is_empty()).then_some(reason);
                let req = dialog::cancel(&f.invite, reason);
                let to = f.target.to;
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
                return;
            }
        }
        if self.phase != Phase::Ringing || resp.status == 100 {
            return;
        }
        // Early media: the first device that sends SDP is heard until one answers.
        let early = if is_sdp(&resp.headers, &resp.body) && self.early_media_from.is_none() {
            self.rewritten_answer(i, &resp.body)
        } else {
            None
        };
        let mut r = self.a_response(resp.status, &resp.reason);
        if let Some(body) = early {
            self.early_media_from = Some(i);
            r.headers.push("Content-Type", "application/sdp");
            r.body = body;
        }
        let r = match self.rel1xx.as_mut() {
            Some(rel) => rel.provisional(now, r),
            None => Some(r),
        };
        if let Some(resp) = r {
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp,
            });
        }
    }

    /// The caller's PRACK (RFC 3262) in its early or confirmed dialog: 200 and the next
    /// reliable provisional or the held 2xx; 481 when nothing of ours awaits it.
    pub(super) fn on_prack(&mut self, now: Instant, key: TxnKey, req: &Request) {
        let inv = &self.setup.invite;
        let ours = req.call_id() == inv.call_id()
            && req.from_tag() == inv.from_tag()
            && req.to_tag().as_deref() == Some(self.a_tag.as_str());
        let (resp, next) = match self.rel1xx.as_mut() {
            Some(rel) if ours => rel.prack(now, req),
            _ => (req.response(481, "Call/Transaction Does Not Exist"), None),
        };
        self.out.push_back(Output::Respond { key, resp });
        if let Some(next) = next {
            if next.status >= 200 && !self.setup.from.transport.is_reliable() {
                // The held 2xx goes out now and is retransmitted until the ACK.
                self.a_ok_next = Some((now + T1, T1, now + LINGER));
            }
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: next,
            });
        }
    }

    /// No PRACK came for a reliable provisional within 64·T1: the caller gets a 5xx (RFC 3262
    /// §3), the answered device (if one answered meanwhile) a BYE.
    pub(super) fn no_prack(&mut self, now: Instant) {
        tracing::info!("the caller never acknowledged a reliable provisional (PRACK)");
        self.ending(EndReason::Rejected);
        match self.phase {
            Phase::Ringing => self.hang_up(now, Some(500)),
            Phase::Answered if self.a_ok_next.is_none() => {
                // The 2xx was held for the PRACK and never sent.
                self.a_ok = None;
                self.a_dialog = None;
                let r = self.a_response(500, "Server Internal Error");
                self.out.push_back(Output::Respond {
                    key: self.setup.key,
                    resp: r,
                });
                self.bye_b();
                self.end_or_linger_at(now);
            }
            _ => {}
        }
    }

    /// The device's answer, checked against our offer, with the relay's A-side address, and the
    /// relay pointed at the device.
    pub(super) fn rewritten_answer(&mut self, i: usize, body: &Bytes) -> Option<Bytes> {
        let offer = self.b_offer.as_ref()?;
        let mut answer = Sdp::parse(body).ok()?;
        let idx = sdp::check_answer(offer, &answer).ok()?;
        let rule = self.target_rule(&self.forks[i].target);
        if let Err(e) = self.take_sdes(false, rule, &mut answer, false) {
            tracing::info!("the callee's answer: {e}");
            return None;
        }
        self.b_answer = Some(answer.clone());
        let b_events = answer.media.get(idx).and_then(codecs::telephone_event);
        let transcode = match self.a_origin.as_ref() {
            Some(origin) => match codecs::answer_back(origin, &mut answer, idx) {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!("the callee's answer: {e}");
                    return None;
                }
            },
            None => None,
        };
        let addr = answer.rtp_addr(idx);
        self.out.push_back(Output::Media(MediaChange::B(
            addr,
            self.forks[i].target.to.addr.ip(),
        )));
        self.out
            .push_back(Output::Media(MediaChange::Transcode(transcode)));
        let (a_audio, b_audio) = codecs::audio_clocks(&answer, idx, transcode);
        self.out
            .push_back(Output::Media(MediaChange::Audio(a_audio, b_audio)));
        let a_events = answer.media.get(idx).and_then(codecs::telephone_event);
        self.set_telephone_events(a_events, b_events);
        sdp::rewrite_address(&mut answer, idx, self.setup.relay_a);
        Some(self.answer_body(true, &answer))
    }

    pub(super) fn on_answer(&mut self, now: Instant, i: usize, resp: Response) {
        let winning = self.winner.is_none() && self.phase == Phase::Ringing;
        // Offerless: the winner's ACK must carry the caller's answer, so it waits for the
        // caller's ACK (a retransmitted 2xx meanwhile is not ACKed without it).
        let hold = self.offerless
            && ((winning && self.forks[i].dialog.is_none())
                || (self.winner == Some(i) && self.b_ack.is_some()));
        let f = &mut self.forks[i];
        let Some((first, to, ack)) = ack_answer(f, &resp, &mut *self.rng) else {
            return;
        };
        if !hold {
            self.out.push_back(Output::Stateless { to, req: ack });
        } else if first {
            self.b_ack = Some((to, ack));
        }
        if !first {
            return;
        }
        f.state = ForkState::Answered;
        if self.winner.is_some() || self.phase != Phase::Ringing {
            // Answered too late (another device won, or the caller left): hang it up.
            self.bye_fork(i);
            self.end_check();
            return;
        }
        let body = if self.offerless {
            self.offer_for_caller(i, &resp)
        } else {
            is_sdp(&resp.headers, &resp.body)
                .then(|| self.rewritten_answer(i, &resp.body))
                .flatten()
        };
        let Some(body) = body else {
            // No usable answer (or offer): the call cannot carry audio.
            self.ending(EndReason::Rejected);
            self.winner = Some(i);
            self.release_b_ack();
            self.bye_b();
            let mut r = self.a_response(488, "Not Acceptable Here");
            let why = if self.offerless {
                "the callee answered without a usable SDP offer"
            } else {
                "the callee answered without a usable SDP answer"
            };
            r.headers.push(
                "Warning",
                csps_sip::validate::warning_value(&self.setup.agent, why),
            );
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.cancel_forks(now, Some(COMPLETED_ELSEWHERE));
            self.end_or_linger_at(now);
            return;
        };
        self.answer_caller(now, i, body, &resp);
    }

    /// Device `i` (fork or replacing phone) answered with `b_ok`: the caller gets the 200 with
    /// `body`, the other devices a CANCEL.
    pub(super) fn answer_caller(&mut self, now: Instant, i: usize, body: Bytes, b_ok: &Response) {
        self.winner = Some(i);
        let mut ok = self.a_response(200, "OK");
        ok.headers
            .push("Allow", allow_for(self.setup.a_sbc.as_ref()));
        if self.setup.a_sbc.is_none() {
            ok.headers.push("Supported", "replaces");
        }
        self.start_session_timer(now, b_ok, &mut ok);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.a_dialog = Dialog::uas(&self.setup.invite, &self.a_tag, &self.a_contact);
        // RFC 3262 §3: held while a reliable provisional with SDP awaits its PRACK.
        let send_now = match self.rel1xx.as_mut() {
            Some(rel) => rel.final_ok(ok.clone()).is_some(),
            None => true,
        };
        if send_now {
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: ok.clone(),
            });
        }
        if !self.setup.from.transport.is_reliable() {
            self.a_ok = Some(ok);
            if send_now {
                self.a_ok_next = Some((now + T1, T1, now + LINGER));
            }
        }
        self.phase = Phase::Answered;
        self.ring_deadline = None;
        self.out.push_back(Output::Answered);
        self.cancel_forks(now, Some(COMPLETED_ELSEWHERE));
    }

    /// Offerless: the answering device `i`'s offer in its 2xx, restricted to what the gateway
    /// relays and pointed at the relay's A side, for the 200 to the caller.
    fn offer_for_caller(&mut self, i: usize, resp: &Response) -> Option<Bytes> {
        if !is_sdp(&resp.headers, &resp.body) {
            return None;
        }
        let mut offer = Sdp::parse(&resp.body).ok()?;
        let rule = self.target_rule(&self.forks[i].target);
        self.take_sdes(false, rule, &mut offer, true).ok()?;
        let addr = offer.audio_index().and_then(|x| offer.rtp_addr(x));
        let idx = sdp::restrict_offer(&mut offer, sdp::SUPPORTED).ok()?;
        // What B can receive: the offer a transfer of A's side makes.
        self.b_answer = Some(offer.clone());
        // Codecs not chosen here: DTMF passes through as it is.
        self.telephone_events = (None, None);
        self.out.push_back(Output::Media(MediaChange::B(
            addr,
            self.forks[i].target.to.addr.ip(),
        )));
        sdp::rewrite_address(&mut offer, idx, self.setup.relay_a);
        let body = self.offer_body(true, self.srtp_rule(true), &offer);
        self.a_offer = Some(offer);
        Some(body)
    }

    /// Offerless: the caller's ACK carries its answer, which goes on in the ACK held for the
    /// answering device; an ACK without a usable answer ends the call (§13.2.2.4: ACK, then
    /// BYE).
    pub(super) fn answer_in_ack(&mut self, now: Instant, ack: &Request, offer: &Sdp) {
        let answer = self
            .answer_to(true, self.srtp_rule(true), offer, ack)
            .map(|(mut a, idx)| {
                let addr = a.rtp_addr(idx);
                sdp::rewrite_address(&mut a, idx, self.setup.relay_b);
                (addr, a)
            });
        let Some((addr, answer)) = answer else {
            tracing::info!("the caller's ACK carries no usable answer to the callee's offer");
            self.ending(EndReason::Rejected);
            self.hang_up(now, None);
            return;
        };
        self.telephone_events = (None, None);
        self.out.push_back(Output::Media(MediaChange::A(
            addr,
            self.setup.from.addr.ip(),
        )));
        let body = self.answer_body(false, &answer);
        // What A can receive, facing B: the offer a transfer of B's side makes.
        self.b_offer = Some(answer);
        if let Some((to, mut req)) = self.b_ack.take() {
            req.headers.push("Content-Type", "application/sdp");
            req.body = body;
            self.out.push_back(Output::Stateless { to, req });
        }
    }

    /// The answer in `ack` (an ACK to a 2xx that carried `offer`) from leg A's side (`a`) or
    /// B's, checked against the offer, its SDES taken under `rule` (the relay's keys for that
    /// side), and its audio section; `None` when the ACK has no usable answer.
    pub(super) fn answer_to(
        &mut self,
        a: bool,
        rule: LegSrtp,
        offer: &Sdp,
        ack: &Request,
    ) -> Option<(Sdp, usize)> {
        if !is_sdp(&ack.headers, &ack.body) {
            return None;
        }
        let mut answer = Sdp::parse(&ack.body).ok()?;
        let idx = sdp::check_answer(offer, &answer).ok()?;
        self.take_sdes(a, rule, &mut answer, false).ok()?;
        Some((answer, idx))
    }

    /// Sends the held ACK to the answering device as it is (the call is being torn down).
    pub(super) fn release_b_ack(&mut self) {
        if let Some((to, req)) = self.b_ack.take() {
            self.out.push_back(Output::Stateless { to, req });
        }
    }

    pub(super) fn fork_failed(&mut self, now: Instant, i: usize, status: u16) {
        let f = &mut self.forks[i];
        if matches!(f.state, ForkState::Answered | ForkState::Done(_)) {
            return;
        }
        f.state = ForkState::Done(status);
        if self.phase == Phase::Ringing
            && let Some(s) = all_refused(&self.forks)
        {
            let r = self.a_response(s, csps_sip::message::reason_phrase(s));
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.ending(EndReason::CalleeRefused);
            self.end_or_linger_at(now);
            return;
        }
        self.end_check();
    }
}
