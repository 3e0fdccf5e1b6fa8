//! INVITE with Replaces (RFC 3891): a phone takes over a leg, picks up a ringing one, or joins.

use std::time::Instant;

use bytes::Bytes;
use csps_sip::dialog::Dialog;
use csps_sip::replaces::Replaces;
use csps_sip::sdp::{self, Sdp};
use csps_sip::{Request, SipHeaders};

use super::hangup::fork_bye;
use super::messages::{contact_for, hex_token, is_sdp};
use super::{
    Answered, Call, Fork, ForkState, Joining, LINGER, LegDialog, MediaChange, Output, Phase,
    REPLACED, Replacement, T1, Target, party_aor,
};
use crate::calls::codecs;
use crate::media::transcode::LegFormat;

/// What a Replaces names in a call (see [`Call::named_by`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    /// No dialog of this call (or the caller's early dialog, which the gateway did not start).
    Nothing,
    /// A dialog that ended (or is ending).
    Ended,
    /// Leg A's confirmed dialog (`true`) or the answered device's.
    Confirmed(bool),
    /// The early dialog of fork `i`, still ringing.
    Early(usize),
}

/// The domain of an AoR (`sip:user@domain`).
fn domain_of(aor: &str) -> String {
    aor.rsplit('@').next().unwrap_or("").to_ascii_lowercase()
}

impl Call {
    /// The early dialog a call pickup can name (see [`Call::named_by`]): the first ringing
    /// phone fork with a tagged provisional, as (Call-ID, the device's tag, the gateway's tag).
    pub fn early_dialog(&self) -> Option<(String, String, String)> {
        if self.phase != Phase::Ringing {
            return None;
        }
        self.forks.iter().find_map(|f| {
            let ringing =
                f.state == ForkState::Proceeding && f.cancel.is_none() && f.target.sbc.is_none();
            let device = f.early_tags.first().filter(|_| ringing)?;
            let gateway = f.invite.from_hdr()?.tag()?.to_owned();
            Some((f.invite.call_id()?.to_owned(), device.clone(), gateway))
        })
    }

    /// The call's confirmed legs (A first) as their devices hold the dialogs; empty before the
    /// answer. Teams legs are left out: the trunk is not a device a Replaces could reach.
    pub fn dialogs(&self) -> Vec<LegDialog> {
        let mut legs = Vec::with_capacity(2);
        if let Some(d) = &self.a_dialog
            && self.setup.a_sbc.is_none()
        {
            legs.push(LegDialog {
                call_id: d.call_id.clone(),
                gateway_tag: d.local_tag.clone(),
                device_tag: d.remote_tag.clone(),
                target: Target {
                    to: self.setup.from,
                    uri: d.remote_target.clone(),
                    local: self.setup.local,
                    sbc: None,
                },
                // The phone's own user even on a call to Teams (whose caller is the user's
                // number at the trunk's FQDN): its REFER acts as that account.
                party: match &self.setup.caller_party {
                    Some(aor) => format!("<{aor}>"),
                    None => self.setup.caller.clone(),
                },
            });
        }
        if let Some(f) = self.winner.and_then(|w| self.forks.get(w))
            && let Some(d) = &f.dialog
            && f.target.sbc.is_none()
        {
            legs.push(LegDialog {
                call_id: d.call_id.clone(),
                gateway_tag: d.local_tag.clone(),
                device_tag: d.remote_tag.clone(),
                target: Target {
                    uri: d.remote_target.clone(),
                    ..f.target.clone()
                },
                party: self.setup.callee.clone(),
            });
        }
        legs
    }

    /// Which of this call's dialogs `r` names, as the gateway holds them (RFC 3891 §3: the
    /// `to-tag` is compared with the gateway's tag, the `from-tag` with the device's).
    fn named_by(&self, r: &Replaces) -> Named {
        let ours = |d: &Dialog| {
            d.call_id == r.call_id && d.local_tag == r.to_tag && d.remote_tag == r.from_tag
        };
        let ended = matches!(self.phase, Phase::Ending | Phase::Ended);
        if self.a_dialog.as_ref().is_some_and(ours) {
            return if ended {
                Named::Ended
            } else {
                Named::Confirmed(true)
            };
        }
        if let Some(i) = self
            .forks
            .iter()
            .position(|f| f.dialog.as_ref().is_some_and(ours))
        {
            return if ended || Some(i) != self.winner {
                Named::Ended
            } else {
                Named::Confirmed(false)
            };
        }
        // While ringing, the tags in either order: a busy-lamp field shows the device's view of
        // the dialog (RFC 4235 local-tag and remote-tag), and phones differ in which one they
        // send as `to-tag` (both are random; they cannot be mistaken for each other). Once
        // answered, RFC 3891's order only, as for the confirmed dialogs above.
        let swapped_too = self.phase == Phase::Ringing;
        let early = self.forks.iter().position(|f| {
            let gateway = f.invite.from_tag();
            let tagged = |ours: &str, device: &String| {
                gateway.as_deref() == Some(ours) && f.early_tags.contains(device)
            };
            f.invite.call_id() == Some(r.call_id.as_str())
                && (tagged(&r.to_tag, &r.from_tag)
                    || (swapped_too && tagged(&r.from_tag, &r.to_tag)))
        });
        if let Some(i) = early {
            let f = &self.forks[i];
            return if self.phase == Phase::Ringing
                && f.state == ForkState::Proceeding
                && f.cancel.is_none()
            {
                Named::Early(i)
            } else {
                Named::Ended
            };
        }
        if self.former.iter().any(ours) {
            return Named::Ended;
        }
        // Nothing, or the caller's own early dialog, which the gateway did not initiate: 481
        // either way (§3).
        Named::Nothing
    }

    /// An INVITE with Replaces naming one of this call's dialogs (RFC 3891 §3). A phone's
    /// confirmed leg is taken over by another device of the same user (200, the replaced
    /// device gets a BYE with `Reason`, the other party a re-INVITE with the new media); a
    /// device's early dialog (the call ringing there) is picked up by any user of the called
    /// user's domain (200 to the phone, CANCEL to the ringing devices, 200 to the caller).
    /// Refusals: 481 for no such dialog, 603 for one that ended, 486 for `early-only` on a
    /// confirmed dialog, 403 for a sender the rule does not allow (and for the dialog with the
    /// Teams trunk, whose party is no phone's user), 491 while the session changes.
    pub(super) fn on_replace(&mut self, now: Instant, rep: Replacement) {
        let named = self.named_by(&rep.replaces);
        let refuse = |this: &mut Call, status: u16, why: &str| {
            tracing::info!(status, "INVITE with Replaces refused: {why}");
            let mut r = this.refusal(&rep.req, status, Some(why));
            if let Some(to) = rep.req.headers.get("To") {
                r.headers
                    .set("To", format!("{to};tag={}", hex_token(&mut *this.rng)));
            }
            this.out.push_back(Output::Respond {
                key: rep.key,
                resp: r,
            });
        };
        let sender = party_aor(&rep.party);
        match named {
            Named::Nothing => refuse(self, 481, "the Replaces names no dialog of this call"),
            Named::Ended => refuse(self, 603, "the dialog the Replaces names has ended"),
            // RFC 3891 §3 lets only the party being replaced (or one authenticated as it)
            // replace a dialog, and the party of the gateway's dialog with the trunk is the
            // Teams user: no phone is. (A phone takes over a call with Teams by naming its own
            // user's dialog with the gateway, the call's other leg.)
            Named::Confirmed(a) if self.sbc_of(a).is_some() => refuse(
                self,
                403,
                "the dialog with the Teams trunk is the Teams party's; name the phone's dialog",
            ),
            Named::Confirmed(_) if rep.replaces.early_only => {
                refuse(self, 486, "early-only, and the dialog is confirmed")
            }
            Named::Confirmed(a) if !sender.eq_ignore_ascii_case(&self.party_aor(a)) => refuse(
                self,
                403,
                "only the user of the replaced phone may take over an answered call",
            ),
            Named::Confirmed(_) if self.session_changing() => {
                refuse(self, 491, "the session is being changed")
            }
            Named::Confirmed(a) => {
                if let Err((status, why)) = self.take_over(now, &rep, a) {
                    refuse(self, status, &why);
                }
            }
            Named::Early(i) if self.forks[i].target.sbc.is_some() => {
                refuse(self, 403, "a call ringing at Teams is not picked up here")
            }
            Named::Early(_) if domain_of(&sender) != domain_of(&self.party_aor(false)) => refuse(
                self,
                403,
                "a call is picked up only by users of the called user's domain",
            ),
            Named::Early(_) if self.joining.is_some() => {
                refuse(self, 491, "another phone is picking the call up")
            }
            Named::Early(_) => {
                if let Err((status, why)) = self.pick_up(now, &rep) {
                    refuse(self, status, &why);
                }
            }
        }
    }

    /// The replacing phone's offer answered by the gateway, for the leg A (`a`) or B it takes:
    /// its SDP as answered (its own address, one codec, `prefer`red when it has one of them;
    /// SDES taken into that side), the audio section and the format it will use.
    fn replacing_answer(
        &mut self,
        a: bool,
        rep: &Replacement,
        prefer: &[sdp::Codec],
    ) -> Result<(Sdp, usize, LegFormat), (u16, String)> {
        let req = &rep.req;
        if req.body.is_empty() {
            return Err((
                488,
                "an INVITE with Replaces needs an SDP offer here".into(),
            ));
        }
        if !is_sdp(&req.headers, &req.body) {
            return Err((415, "the body is not SDP".into()));
        }
        let mut offer = Sdp::parse(&req.body).map_err(|e| (400, format!("bad SDP: {e}")))?;
        let fail = |e: sdp::OfferError| (e.status(), e.to_string());
        let narrowband = self.setup.narrowband;
        let answer_to = |o: &mut Sdp| -> Result<(Sdp, usize, LegFormat), (u16, String)> {
            let idx = sdp::restrict_offer(o, sdp::SUPPORTED).map_err(fail)?;
            if narrowband {
                codecs::narrowband(o, idx).map_err(fail)?;
            }
            let (answer, format) = codecs::answer_one(o, idx, prefer).map_err(fail)?;
            Ok((answer, idx, format))
        };
        // Checked before the SDES is taken: a refusal leaves the leg's keys as they were.
        answer_to(&mut offer.clone())?;
        let rule = self.setup.srtp.leg(rep.from.transport, false);
        self.take_sdes(a, rule, &mut offer, true).map_err(fail)?;
        answer_to(&mut offer)
    }

    /// Answers the replacing phone 200 with `answer` (at the relay's side facing it, leg A
    /// `a` or B) and returns the phone as a device of this call, its dialog made.
    fn accept_replacing(
        &mut self,
        now: Instant,
        rep: &Replacement,
        a: bool,
        (answer, idx): (&Sdp, usize),
    ) -> Result<Fork, (u16, String)> {
        let mut to_phone = answer.clone();
        sdp::rewrite_address(&mut to_phone, idx, self.relay_facing(a));
        let body = self.answer_body(a, &to_phone);
        self.ok_to_replacing(now, rep, body)
    }

    /// Answers the replacing phone 200 with the SDP `body` (the gateway's answer, or its offer
    /// to an offerless INVITE), repeated until the ACK, and returns the phone as a device of
    /// this call, its dialog made.
    fn ok_to_replacing(
        &mut self,
        now: Instant,
        rep: &Replacement,
        body: Bytes,
    ) -> Result<Fork, (u16, String)> {
        let tag = hex_token(&mut *self.rng);
        let contact = contact_for(rep.from.transport, rep.local, None);
        let dialog = Dialog::uas(&rep.req, &tag, &contact).ok_or((
            400,
            "no Contact or From tag to make a dialog with".to_owned(),
        ))?;
        let mut ok = rep.req.response(200, "OK");
        if let Some(to) = rep.req.headers.get("To") {
            ok.headers.set("To", format!("{to};tag={tag}"));
        }
        ok.headers.push("Contact", contact);
        ok.headers.push("Allow", crate::calls::ALLOW_IN_DIALOG);
        ok.headers.push("Supported", "replaces");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.out.push_back(Output::Respond {
            key: rep.key,
            resp: ok.clone(),
        });
        let next = (!rep.from.transport.is_reliable()).then_some((now + T1, T1, now + LINGER));
        let cseq = rep.req.cseq().map_or(0, |c| c.seq);
        self.replacement = Some((
            rep.key,
            Answered {
                cseq,
                resp: ok,
                offer_to_origin: None,
                next,
            },
        ));
        Ok(Fork {
            tag: self.tag(),
            target: Target {
                to: rep.from,
                uri: dialog.remote_target.clone(),
                local: rep.local,
                sbc: None,
            },
            invite: rep.req.clone(),
            state: ForkState::Answered,
            cancel: None,
            dialog: Some(dialog),
            early_tags: Vec::new(),
        })
    }

    /// A confirmed leg (A when `a`) taken over: the phone is answered in the codec the other
    /// party uses when it can, and takes the leg's place as a transfer's target does
    /// ([`Call::take_place`]): the old device gets a BYE with [`REPLACED`], the other party a
    /// re-INVITE with the phone's media.
    fn take_over(&mut self, now: Instant, rep: &Replacement, a: bool) -> Result<(), (u16, String)> {
        if rep.req.body.is_empty() {
            let offer = self
                .offer_in_place_of(a)
                .ok_or((491, "the session has no media to offer yet".to_owned()))?;
            return self.join_offerless(now, rep, a, offer);
        }
        let other = if a { &self.b_answer } else { &self.a_origin };
        let prefer = other.as_ref().map(codecs::audio_codecs).unwrap_or_default();
        let (answer, idx, _) = self.replacing_answer(a, rep, &prefer)?;
        let phone = self.accept_replacing(now, rep, a, (&answer, idx))?;
        tracing::info!(
            leg = if a { "A" } else { "B" },
            "a phone took over a leg (Replaces)"
        );
        let party = party_aor(&rep.party);
        self.take_place(
            a,
            phone,
            rep.party.clone(),
            party,
            (answer, idx),
            Some(Some(REPLACED)),
            Vec::new(),
        );
        Ok(())
    }

    /// An offerless INVITE with Replaces (RFC 3264 §4: the 2xx carries the offer, the ACK the
    /// answer) of a confirmed leg (A when `a`) or of a ringing device: the phone gets 200 with
    /// the neutral `offer` (a transfer's target's, [`Call::offer_in_place_of`], or the ringing
    /// devices') and takes the leg's place only once its ACK answers ([`Call::joined`]); until
    /// then the session stays as it is (491 to changes).
    fn join_offerless(
        &mut self,
        now: Instant,
        rep: &Replacement,
        a: bool,
        offer: Sdp,
    ) -> Result<(), (u16, String)> {
        let offer = self.offer_for(true, &offer);
        let rule = self.setup.srtp.leg(rep.from.transport, false);
        let body = self.offer_body(a, rule, &offer);
        let phone = self.ok_to_replacing(now, rep, body)?;
        tracing::info!(
            leg = if a { "A" } else { "B" },
            "an offerless INVITE with Replaces: offered in the 200, waiting for the ACK"
        );
        self.joining = Some(Joining {
            a,
            phone,
            party: rep.party.clone(),
            offer,
        });
        Ok(())
    }

    /// The offerless replacing phone's ACK (`j` its state). With a usable answer the phone
    /// takes the leg's place as with an offer (the old device gets a BYE with [`REPLACED`],
    /// the other party a re-INVITE). Without one, or when the call ended meanwhile, the new
    /// dialog gets a BYE (RFC 3261 §13.2.2.4 and RFC 3264 §4: a 2xx whose offer cannot be
    /// answered is ACKed, then ended) and the old one goes on untouched. Why the old dialog
    /// waits for the ACK: RFC 3891 §3 has the replaced dialog ended because a new one took its
    /// place, and an offerless new dialog has no session before the ACK's answer; ending the
    /// old one at the 200 would leave the other party with nobody should that answer fail.
    pub(super) fn joined(&mut self, now: Instant, ack: &Request, j: Joining) {
        if self.phase == Phase::Ringing {
            return self.picked_up(now, ack, j);
        }
        let rule = self.setup.srtp.leg(j.phone.target.to.transport, false);
        let answer = (self.phase == Phase::Confirmed)
            .then(|| self.answer_to(j.a, rule, &j.offer, ack))
            .flatten();
        let Some(answer) = answer else {
            tracing::info!(
                "the replacing phone's ACK carries no usable answer (or the call ended): BYE"
            );
            self.bye_joining(j.phone);
            self.end_check();
            return;
        };
        tracing::info!(
            leg = if j.a { "A" } else { "B" },
            "a phone took over a leg (offerless Replaces)"
        );
        let party = party_aor(&j.party);
        self.take_place(
            j.a,
            j.phone,
            j.party,
            party,
            answer,
            Some(Some(REPLACED)),
            Vec::new(),
        );
    }

    /// The ACK of an offerless phone picking up the ringing call: its answer to the ringing
    /// devices' offer makes it the answering device, as if it had answered that offer (the
    /// relay transcodes what the caller lacks; the caller gets the 200, the devices a CANCEL).
    /// Without a usable answer its dialog gets a BYE and the devices ring on.
    fn picked_up(&mut self, now: Instant, ack: &Request, j: Joining) {
        self.forks.push(j.phone);
        let i = self.forks.len() - 1;
        let body = is_sdp(&ack.headers, &ack.body)
            .then(|| self.rewritten_answer(i, &ack.body))
            .flatten();
        let Some(body) = body else {
            tracing::info!("the picking-up phone's ACK carries no usable answer: BYE");
            if let Some(phone) = self.forks.pop() {
                self.bye_joining(phone);
            }
            return;
        };
        tracing::info!("a phone picked up the ringing call (offerless Replaces)");
        self.setup.callee.clone_from(&j.party);
        self.out.push_back(Output::Transferred {
            a: false,
            party: party_aor(&j.party),
            teams: false,
        });
        let b_ok = self.forks[i].invite.response(200, "OK");
        self.answer_caller(now, i, body, &b_ok);
    }

    /// Ends an offerless replacing phone's dialog with a BYE (a crossing BYE from it still
    /// gets its 200).
    pub(super) fn bye_joining(&mut self, mut phone: Fork) {
        let reason = "SIP;cause=488;text=\"No usable SDP answer\"";
        if let Some((to, req)) = fork_bye(&mut phone, Some(reason), &mut *self.rng) {
            let tag = self.tag();
            self.pending_byes.push(tag);
            self.out.push_back(Output::Send { tag, to, req });
        }
        self.former.extend(phone.dialog);
    }

    /// Call pickup: the phone answers the ringing call in the devices' place. It is answered
    /// in a codec the caller offered when it has one, the caller in the phone's (the relay
    /// transcodes when they differ), the ringing devices are cancelled ("Call completed
    /// elsewhere").
    fn pick_up(&mut self, now: Instant, rep: &Replacement) -> Result<(), (u16, String)> {
        if rep.req.body.is_empty() {
            // The ringing devices' offer: the relay transcodes what the phone picks from it.
            let offer = self.b_offer.clone().ok_or((
                488,
                "neither the caller nor the phone offered SDP".to_owned(),
            ))?;
            return self.join_offerless(now, rep, false, offer);
        }
        let Some(origin) = self.a_origin.clone() else {
            return Err((488, "the caller's INVITE had no offer to answer".into()));
        };
        let prefer = codecs::audio_codecs(&origin);
        let a_idx = origin.audio_index().ok_or((488, "no audio".to_owned()))?;
        let (answer, idx, phone_format) = self.replacing_answer(false, rep, &prefer)?;
        let (mut to_caller, caller_format) =
            codecs::answer_one(&origin, a_idx, &[phone_format.codec])
                .map_err(|e| (e.status(), e.to_string()))?;
        let phone = self.accept_replacing(now, rep, false, (&answer, idx))?;
        tracing::info!("a phone picked up the ringing call (Replaces)");
        let same = (caller_format.codec, caller_format.payload_type)
            == (phone_format.codec, phone_format.payload_type);
        self.out.push_back(Output::Media(MediaChange::B(
            answer.rtp_addr(idx),
            rep.from.addr.ip(),
        )));
        self.out.push_back(Output::Media(MediaChange::Transcode(
            (!same).then_some((caller_format, phone_format)),
        )));
        self.out.push_back(Output::Media(MediaChange::Audio(
            codecs::leg_clock(&caller_format),
            codecs::leg_clock(&phone_format),
        )));
        self.set_telephone_events(caller_format.telephone_event, phone_format.telephone_event);
        self.b_answer = Some(answer);
        self.forks.push(phone);
        self.setup.callee = rep.party.clone();
        self.out.push_back(Output::Transferred {
            a: false,
            party: party_aor(&rep.party),
            teams: false,
        });
        sdp::rewrite_address(&mut to_caller, a_idx, self.setup.relay_a);
        let body = self.answer_body(true, &to_caller);
        let b_ok = rep.req.response(200, "OK");
        self.answer_caller(now, self.forks.len() - 1, body, &b_ok);
        Ok(())
    }

    /// True when `ack` acknowledges the 2xx to a replacing phone (which stops its
    /// retransmission).
    pub(super) fn replacement_acked(&mut self, ack: &Request) -> bool {
        let Some((_, a)) = &self.replacement else {
            return false;
        };
        let ours = ack.call_id() == a.resp.headers.get("Call-ID")
            && ack.cseq().map(|c| c.seq) == Some(a.cseq);
        if ours {
            self.replacement = None;
        }
        ours
    }
}
