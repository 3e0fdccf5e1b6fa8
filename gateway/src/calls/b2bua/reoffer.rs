//! Re-INVITE and UPDATE relayed between the legs: glare, offerless re-offers, hold, music on hold.

use std::time::{Duration, Instant};

use bytes::Bytes;
use csps_sip::sdp::{self, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Request, Response, SipHeaders};

use super::messages::{contact_for, is_sdp};
use super::timers::{copy_timer_headers, session_expires};
use super::{Answered, Call, LINGER, MIN_SE, MediaChange, Output, Phase, ReOffer, T1};
use crate::calls::codecs;

impl Call {
    /// Music on hold, for a re-offer from leg A (`from_a`) whose audio is `offer.media[idx]`:
    /// a hold (`sendonly`, `inactive`) that says `inactive` goes on as `sendonly`, since the
    /// gateway will send the held leg music; anything else ends the music to the other leg.
    fn hold_offer(&mut self, from_a: bool, offer: &mut Sdp, idx: usize) {
        if !self.setup.music_on_hold {
            return;
        }
        let session = offer.session_direction();
        let Some(m) = offer.media.get_mut(idx) else {
            return;
        };
        match m.direction(session) {
            sdp::Direction::Inactive => m.set_direction(sdp::Direction::SendOnly),
            sdp::Direction::SendOnly => {}
            _ => self.music_off(!from_a),
        }
    }

    /// Stops the music to leg A (`a`) or B (when music on hold is on).
    pub(super) fn music_off(&mut self, a: bool) {
        if self.setup.music_on_hold {
            self.out.push_back(Output::MusicOnHold { a, format: None });
        }
    }

    /// With music on hold on, whether the re-offer `req` holds the other leg: `Some(true)` for
    /// `inactive` (the answer must say `inactive` back), `Some(false)` for `sendonly`.
    fn music_on_hold_for(&self, req: &Request) -> Option<bool> {
        if !self.setup.music_on_hold {
            return None;
        }
        let offer = Sdp::parse(&req.body).ok()?;
        match offer.audio()?.direction(offer.session_direction()) {
            sdp::Direction::Inactive => Some(true),
            sdp::Direction::SendOnly => Some(false),
            _ => None,
        }
    }

    /// The held leg A (`a`) or B answered a hold with `answer`: the music starts in its first
    /// audio format if it receives at all; an answer to an `inactive` hold goes back
    /// `inactive` (RFC 3264 §6.1), though the held leg answered the `sendonly` it was sent.
    fn held_answer(&mut self, a: bool, answer: &mut Sdp, idx: usize, inactive: bool) {
        let session = answer.session_direction();
        let Some(m) = answer.media.get_mut(idx) else {
            return;
        };
        let receives = matches!(
            m.direction(session),
            sdp::Direction::RecvOnly | sdp::Direction::SendRecv
        );
        let format = receives
            .then(|| crate::media::moh::format_for(m.codecs()))
            .flatten();
        if inactive {
            m.set_direction(sdp::Direction::Inactive);
        }
        self.out.push_back(Output::MusicOnHold { a, format });
    }

    /// A re-INVITE or UPDATE from one leg (hold, resume, a new address, a session refresh):
    /// relayed to the other leg with the relay's address in its SDP; that leg's answer comes
    /// back the same way (RFC 3264 §8). Direction attributes pass through unchanged, so a
    /// phone's `sendonly` reaches the other phone, which answers `recvonly`.
    pub(super) fn on_reoffer(&mut self, now: Instant, key: TxnKey, from_a: bool, req: Request) {
        let respond = |this: &mut Call, status: u16, warning: Option<&str>| {
            let mut r = this.refusal(&req, status, warning);
            if status == 500 {
                // §14.2: the origin's earlier request is still being answered.
                r.headers.push("Retry-After", "1");
            }
            this.out.push_back(Output::Respond { key, resp: r });
        };
        if let Some(p) = &self.reoffer {
            // §14.1: glare when our own request to this leg is pending; §14.2: 500 with
            // Retry-After when this leg's previous one is still in progress.
            let status = if p.from_a == from_a { 500 } else { 491 };
            respond(self, status, None);
            return;
        }
        if self.own_offer.as_ref().is_some_and(|o| !o.acked) || self.joining.is_some() {
            // The gateway's own re-INVITE to this call is pending (§14.1), or a phone is about
            // to take a leg's place.
            respond(self, 491, None);
            return;
        }
        if self.phase != Phase::Confirmed {
            // The initial INVITE's ACK is still outstanding: the session is not settled yet.
            respond(self, 491, None);
            return;
        }
        let has_body = !req.body.is_empty();
        if has_body && !is_sdp(&req.headers, &req.body) {
            let mut r = req.response(415, "Unsupported Media Type");
            r.headers.push("Accept", "application/sdp");
            self.out.push_back(Output::Respond { key, resp: r });
            return;
        }
        if !has_body && req.method == Method::Update {
            // An UPDATE without an offer only refreshes the session (RFC 3311 §5.2, RFC 4028).
            let mut r = req.response(200, "OK");
            r.headers.push("Contact", self.contact_towards(from_a));
            if let Some((interval, _)) = self.session {
                let secs = session_expires(&req.headers)
                    .map(|(se, _)| se.max(MIN_SE))
                    .unwrap_or(interval.as_secs() as u32);
                r.headers
                    .push("Session-Expires", format!("{secs};refresher=uac"));
                r.headers.push("Require", "timer");
                self.session = Some((
                    Duration::from_secs(u64::from(secs)),
                    now + Duration::from_secs(u64::from(secs)),
                ));
            }
            self.out.push_back(Output::Respond { key, resp: r });
            return;
        }
        let (offer, origin_addr, body, origin) = if has_body {
            let mut offer = match Sdp::parse(&req.body) {
                Ok(s) => s,
                Err(e) => {
                    respond(self, 400, Some(&format!("bad SDP: {e}")));
                    return;
                }
            };
            if let Err(e) = self.take_sdes(from_a, self.srtp_rule(from_a), &mut offer, true) {
                respond(self, e.status(), Some(&e.to_string()));
                return;
            }
            let origin_addr = offer.audio_index().and_then(|i| offer.rtp_addr(i));
            let (idx, origin) = match self.offer_onwards(from_a, &mut offer) {
                Ok(x) => x,
                Err(e) => {
                    respond(self, e.status(), Some(&e.to_string()));
                    return;
                }
            };
            sdp::rewrite_address(&mut offer, idx, self.relay_facing(!from_a));
            self.hold_offer(from_a, &mut offer, idx);
            let offer = self.offer_for(self.is_phone(!from_a), &offer);
            let body = self.offer_body(!from_a, self.srtp_rule(!from_a), &offer);
            (Some(offer), origin_addr, body, Some(origin))
        } else {
            self.music_off(!from_a);
            (None, None, Bytes::new(), None)
        };
        let method = req.method.clone();
        let Some((tag, seq)) = self.send_in_dialog(
            !from_a,
            method.clone(),
            Some("application/sdp"),
            body,
            Some(&req.headers),
            &[],
        ) else {
            respond(self, 481, None);
            return;
        };
        self.reoffer = Some(ReOffer {
            from_a,
            key,
            method,
            req,
            tag,
            seq,
            offer,
            origin_addr,
            origin,
            answered: None,
        });
    }

    /// Our Contact in the dialog with leg A (`a`) or B.
    fn contact_towards(&self, a: bool) -> String {
        if a {
            self.a_contact.clone()
        } else {
            self.winner
                .map(|w| {
                    contact_for(
                        self.forks[w].target.to.transport,
                        self.forks[w].target.local,
                        self.forks[w].target.sbc.as_ref(),
                    )
                })
                .unwrap_or_default()
        }
    }

    /// The relayed re-INVITE/UPDATE failed (non-2xx, timeout): the origin gets `status`, and the
    /// session stays as it was (§14.1).
    pub(super) fn reoffer_failed(&mut self, status: u16, reason: &str) {
        let Some(p) = self.reoffer.take() else { return };
        let mut r = p.req.response(status, reason);
        if status == 491 {
            // The target saw glare too; the origin retries after its own random wait (§14.1).
            r.headers.push("Retry-After", "1");
        }
        self.out.push_back(Output::Respond {
            key: p.key,
            resp: r,
        });
    }

    pub(super) fn on_reoffer_response(&mut self, now: Instant, resp: Response) {
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let (from_a, is_invite, seq) = (p.from_a, p.method == Method::Invite, p.seq);
        if resp.status < 200 {
            return;
        }
        if resp.status >= 300 {
            self.reoffer_failed(resp.status, &resp.reason);
            return;
        }
        if is_invite && p.answered.is_some() {
            // A retransmitted 2xx: our ACK got lost, send it again (for an offerless one the
            // ACK waits for the origin's, which carries the answer).
            if p.offer.is_some() {
                self.ack_in_dialog(!from_a, seq, None);
            }
            return;
        }
        let body_ok = is_sdp(&resp.headers, &resp.body);
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let sent = p.offer.clone();
        let origin_holds = self.music_on_hold_for(&p.req);
        let origin = p.origin.clone();
        let result: Result<(Bytes, Option<Sdp>), String> = match sent.as_ref() {
            // The target's answer to the relayed offer.
            Some(offer) if body_ok => Sdp::parse(&resp.body)
                .map_err(|e| format!("bad SDP answer: {e}"))
                .and_then(|mut answer| {
                    let idx = sdp::check_answer(offer, &answer).map_err(|e| e.to_string())?;
                    self.take_sdes(!from_a, self.srtp_rule(!from_a), &mut answer, false)
                        .map_err(|e| e.to_string())?;
                    if let Some(inactive) = origin_holds {
                        self.held_answer(!from_a, &mut answer, idx, inactive);
                    }
                    let target_events = answer.media.get(idx).and_then(codecs::telephone_event);
                    let transcode = match origin.as_ref() {
                        Some(o) => codecs::answer_back(o, &mut answer, idx)
                            .map_err(|e| e.to_string())?
                            // (origin's, target's) → (A's, B's).
                            .map(|(near, far)| if from_a { (near, far) } else { (far, near) }),
                        None => None,
                    };
                    let target_addr = answer.rtp_addr(idx);
                    sdp::rewrite_address(
                        &mut answer,
                        idx,
                        if from_a {
                            self.setup.relay_a
                        } else {
                            self.setup.relay_b
                        },
                    );
                    self.out.push_back(Output::Media(if from_a {
                        match self.winner {
                            Some(w) => {
                                MediaChange::B(target_addr, self.forks[w].target.to.addr.ip())
                            }
                            None => return Err("no answered device".into()),
                        }
                    } else {
                        MediaChange::A(target_addr, self.setup.from.addr.ip())
                    }));
                    self.out
                        .push_back(Output::Media(MediaChange::Transcode(transcode)));
                    let (a_audio, b_audio) = codecs::audio_clocks(&answer, idx, transcode);
                    self.out
                        .push_back(Output::Media(MediaChange::Audio(a_audio, b_audio)));
                    let origin_events = answer.media.get(idx).and_then(codecs::telephone_event);
                    if from_a {
                        self.set_telephone_events(origin_events, target_events);
                    } else {
                        self.set_telephone_events(target_events, origin_events);
                    }
                    Ok((self.answer_body(from_a, &answer), None))
                }),
            Some(_) => Err("the answer carries no SDP".into()),
            // Offerless re-INVITE: the target's 2xx carries the offer for the origin.
            None if body_ok && is_invite => Sdp::parse(&resp.body)
                .map_err(|e| format!("bad SDP offer: {e}"))
                .and_then(|mut offer| {
                    self.take_sdes(!from_a, self.srtp_rule(!from_a), &mut offer, true)
                        .map_err(|e| e.to_string())?;
                    let target_addr = offer.audio_index().and_then(|i| offer.rtp_addr(i));
                    let idx = sdp::restrict_offer(&mut offer, sdp::SUPPORTED)
                        .map_err(|e| e.to_string())?;
                    self.telephone_events = (None, None);
                    self.out.push_back(Output::Media(if from_a {
                        match self.winner {
                            Some(w) => {
                                MediaChange::B(target_addr, self.forks[w].target.to.addr.ip())
                            }
                            None => return Err("no answered device".into()),
                        }
                    } else {
                        MediaChange::A(target_addr, self.setup.from.addr.ip())
                    }));
                    sdp::rewrite_address(
                        &mut offer,
                        idx,
                        if from_a {
                            self.setup.relay_a
                        } else {
                            self.setup.relay_b
                        },
                    );
                    Ok((
                        self.offer_body(from_a, self.srtp_rule(from_a), &offer),
                        Some(offer),
                    ))
                }),
            None => Err("the 2xx to an offerless re-INVITE carries no offer".into()),
        };
        let (body, offer_to_origin) = match result {
            Ok(x) => x,
            Err(why) => {
                // The target took a session description the origin cannot be given: the
                // target's transaction is completed, the origin learns why and keeps its
                // session (§14.1).
                tracing::info!("re-offer failed: {why}");
                if is_invite {
                    self.ack_in_dialog(!from_a, seq, None);
                }
                let Some(p) = self.reoffer.take() else { return };
                let mut r = p.req.response(488, "Not Acceptable Here");
                r.headers.push(
                    "Warning",
                    csps_sip::validate::warning_value(&self.setup.agent, &why),
                );
                self.out.push_back(Output::Respond {
                    key: p.key,
                    resp: r,
                });
                return;
            }
        };
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let origin_addr = p.origin_addr;
        let mut ok = p.req.response(200, "OK");
        ok.headers.push("Contact", self.contact_towards(from_a));
        ok.headers.push("Allow", crate::calls::ALLOW_IN_DIALOG);
        copy_timer_headers(&resp.headers, &mut ok.headers);
        if resp
            .headers
            .get("Require")
            .is_some_and(|r| r.contains("timer"))
        {
            ok.headers.push("Require", "timer");
        }
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        let key = p.key;
        let cseq = p.req.cseq().map(|c| c.seq).unwrap_or(0);
        self.refreshed(now, Some(&resp));
        if origin_addr.is_some() {
            self.media_for(from_a, origin_addr);
        }
        self.out.push_back(Output::Respond {
            key,
            resp: ok.clone(),
        });
        if !is_invite {
            self.reoffer = None;
            return;
        }
        let offerless = offer_to_origin.is_some();
        if !offerless {
            // With an offer relayed, the target's 2xx is ACKed at once.
            self.ack_in_dialog(!from_a, seq, None);
        }
        let reliable = if from_a {
            self.setup.from.transport.is_reliable()
        } else {
            self.winner
                .is_some_and(|w| self.forks[w].target.to.transport.is_reliable())
        };
        if let Some(p) = self.reoffer.as_mut() {
            p.answered = Some(Answered {
                cseq,
                resp: ok,
                offer_to_origin,
                next: (!reliable).then_some((now + T1, T1, now + LINGER)),
            });
        }
    }

    /// The origin's ACK to the 2xx of a relayed re-INVITE; for an offerless one it carries the
    /// answer, which goes on in the ACK to the target.
    pub(super) fn on_reoffer_ack(&mut self, ack: Request) {
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let Some(a) = p.answered.as_ref() else { return };
        let in_dialog = if p.from_a {
            self.a_dialog.as_ref().is_some_and(|d| d.matches(&ack))
        } else {
            self.winner
                .and_then(|w| self.forks[w].dialog.as_ref())
                .is_some_and(|d| d.matches(&ack))
        };
        if !in_dialog || ack.cseq().map(|c| c.seq) != Some(a.cseq) {
            return;
        }
        let Some(p) = self.reoffer.take() else { return };
        let Some(a) = p.answered else { return };
        let Some(offer) = a.offer_to_origin else {
            return;
        };
        let answer = self
            .answer_to(p.from_a, self.srtp_rule(p.from_a), &offer, &ack)
            .map(|(mut answer, idx)| {
                let addr = answer.rtp_addr(idx);
                self.telephone_events = (None, None);
                self.media_for(p.from_a, addr);
                sdp::rewrite_address(&mut answer, idx, self.relay_facing(!p.from_a));
                self.answer_body(!p.from_a, &answer)
            });
        if answer.is_none() {
            tracing::info!("the ACK to an offerless re-INVITE carries no usable answer");
        }
        self.ack_in_dialog(!p.from_a, p.seq, answer);
    }
}
