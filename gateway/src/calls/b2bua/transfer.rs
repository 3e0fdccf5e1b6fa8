//! REFER: blind and attended transfers, NOTIFYs to the transferor, the move into a room.

use std::time::Instant;

use bytes::Bytes;
use csps_sip::sdp::{self, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Request, Response};

use super::forks::{ack_answer, all_refused, cancel_fork};
use super::hangup::fork_bye;
use super::messages::{contact_for, hex_token, is_sdp, new_invite};
use super::timers::teams_timer;
use super::{
    COMPLETED_ELSEWHERE, Call, EndReason, Fork, ForkState, Handover, MediaChange, Moving,
    NO_ANSWER, Output, OwnOffer, Phase, ReferRefusal, RoomOutcome, RoomRef, Transfer,
    TransferTarget,
};

impl Call {
    /// A REFER from leg A or the answered device (X): 202, a NOTIFY with `100 Trying`, and an
    /// INVITE to every device of the Refer-To's user offering the other leg's (Y's) media; the
    /// answer replaces X (RFC 3515, RFC 5589 §6). Attended transfer is the same with one
    /// device, the other party of X's consultation call, whose INVITE carries a Replaces of
    /// its dialog in that call (RFC 3891, RFC 5589 §7): it answers and hangs up the consultation
    /// dialog itself. Refusals: 400 without a usable Refer-To, 501 for a Replaces naming a
    /// Teams leg, 491 while the session is being set up, modified or transferred;
    /// an unknown or unreachable target gets 202 and a NOTIFY with the final status, and both
    /// parties keep their call.
    pub(super) fn on_refer(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        target: Result<TransferTarget, ReferRefusal>,
    ) {
        let Some(from_a) = self.referrer(key, &req) else {
            return;
        };
        let respond = |this: &mut Call, status: u16, warning: Option<&str>| {
            let resp = this.refusal(&req, status, warning);
            this.out.push_back(Output::Respond { key, resp });
        };
        let target = match target {
            Ok(t)
                if t.referrer
                    .as_ref()
                    .is_some_and(|r| *r != self.party_aor(from_a)) =>
            {
                return respond(self, 403, Some("the Replaces names another party's dialog"));
            }
            Ok(t) => t,
            Err(ReferRefusal::Bad(why)) => return respond(self, 400, Some(&why)),
            Err(ReferRefusal::Unsupported(why)) => return respond(self, 501, Some(&why)),
            Err(ReferRefusal::Failed(status)) => {
                respond(self, 202, None);
                self.notify_transferor(from_a, 100);
                self.notify_transferor(from_a, status);
                return;
            }
        };
        let Some(offer) = self.offer_in_place_of(from_a) else {
            return respond(self, 491, None);
        };
        respond(self, 202, None);
        self.notify_transferor(from_a, 100);
        // The new leg is presented as the transferee, referred by the transferor, both as the
        // gateway asserts them (never the Referred-By a phone wrote).
        let (mut transferee, mut transferor) = if from_a {
            (self.setup.callee.clone(), self.setup.caller.clone())
        } else {
            (self.setup.caller.clone(), self.setup.callee.clone())
        };
        // A transfer by Teams goes back through the trunk: the transferee is who Teams knew on
        // the transferor's leg (the user's number at the gateway's FQDN), and Teams' own
        // Referred-By (its x-m/x-t/x-ti/x-tt name the referring Teams user) goes with it.
        if let Some(a) = &target.asserted {
            transferee.clone_from(a);
            transferor.clone_from(a);
        }
        let teams = self.sbc_of(from_a).cloned();
        if let Some(s) = &teams {
            transferee = format!("<sip:{}@{};user=phone>", s.user, s.fqdn);
            if let Some(by) = req.headers.get("Referred-By") {
                transferor = by.to_owned();
            }
        }
        let from_tag = hex_token(&mut *self.rng);
        let replaces = target.replaces.as_ref().map(ToString::to_string);
        let mut forks = Vec::new();
        for mut t in target.targets {
            let tag = self.tag();
            if let (Some(own), Some(s)) = (t.sbc.as_mut(), &teams) {
                own.user.clone_from(&s.user);
            }
            // The target's device takes the transferor's side of the relay, and its keys.
            let body = self.offer_body(from_a, self.target_rule(&t), &offer);
            let mut req = new_invite(
                &t,
                &transferee,
                &from_tag,
                &target.to,
                &target.call_id,
                body,
                &mut *self.rng,
            );
            if t.sbc.is_some() {
                teams_timer(&mut req.headers);
            }
            req.headers.push("Referred-By", transferor.clone());
            if let Some(r) = &replaces {
                // A device that cannot replace must refuse (420), not ring a second call.
                req.headers.push("Replaces", r.as_str());
                req.headers.push("Require", "replaces");
            }
            self.out.push_back(Output::Send {
                tag,
                to: t.to,
                req: req.clone(),
            });
            forks.push(Fork {
                tag,
                target: t,
                invite: req,
                state: ForkState::Calling,
                cancel: None,
                dialog: None,
                early_tags: Vec::new(),
            });
        }
        self.transfer = Some(Transfer {
            x_is_a: from_a,
            x_gone: false,
            forks,
            offer,
            party: target.party,
            to: target.to,
            deadline: now + NO_ANSWER,
        });
    }

    /// The neutral offer to a device that is to take leg A's (`x_is_a`) or B's place (a
    /// transfer's target, an offerless replacing phone): what the other party receives (B's
    /// answer, or A's offer without the codecs the gateway added: the other party is
    /// re-INVITEd in the codec the device picks), at the relay's side facing that leg,
    /// `sendrecv` (a party held before is resumed with the new one); `None` before the session
    /// has that media.
    pub(super) fn offer_in_place_of(&self, x_is_a: bool) -> Option<Sdp> {
        let mut offer = if x_is_a {
            self.b_answer.clone()
        } else {
            self.a_origin.clone().or_else(|| self.b_offer.clone())
        }?;
        if let Some(i) = offer.audio_index() {
            sdp::rewrite_address(&mut offer, i, self.relay_facing(x_is_a));
        }
        if let Some(m) = offer.audio_index().and_then(|i| offer.media.get_mut(i)) {
            m.set_direction(sdp::Direction::SendRecv);
        }
        Some(offer)
    }

    /// Which leg a REFER comes from (A: `true`), when it may transfer now; `None` after
    /// answering 481 (not a leg of the call, or a device that lost the race) or 491 (the
    /// session is being set up, modified, transferred or moved into a room).
    fn referrer(&mut self, key: TxnKey, req: &Request) -> Option<bool> {
        let (from_a, fork) = self.leg_of(key, req)?;
        let status = if !from_a && (fork != self.winner || self.winner.is_none()) {
            481
        } else if self.session_changing() {
            491
        } else {
            return Some(from_a);
        };
        let resp = self.refusal(req, status, None);
        self.out.push_back(Output::Respond { key, resp });
        None
    }

    /// True while the session is not settled: the first ACK is pending, or a re-offer, a
    /// transfer, a move into a room, the gateway's own re-INVITE or an offerless replacement
    /// is in progress (a REFER or a Replaces then gets 491).
    pub(super) fn session_changing(&self) -> bool {
        self.phase != Phase::Confirmed
            || self.transfer.is_some()
            || self.moving.is_some()
            || self.reoffer.is_some()
            || self.own_offer.as_ref().is_some_and(|o| !o.acked)
            || self.joining.is_some()
    }

    /// A REFER whose Refer-To is a conference room of this gateway (RFC 4579: a phone's
    /// network conference asks the other party to join, or a user transfers a caller into a
    /// meeting room): 202 and NOTIFY `100`, then the other party (Y) is handed to the room,
    /// which re-INVITEs Y in its dialog with the room's media; the final NOTIFY is the room's
    /// outcome ([`Call::on_room_outcome`]). Refusals as for a transfer. A Teams party is moved
    /// as a phone is, the room speaking to it as the trunk does (FQDN, SRTP, session timer).
    pub(super) fn on_refer_to_room(&mut self, key: TxnKey, req: Request, room: RoomRef) {
        let Some(from_a) = self.referrer(key, &req) else {
            return;
        };
        let resp = self.refusal(&req, 202, None);
        self.out.push_back(Output::Respond { key, resp });
        self.notify_transferor(from_a, 100);
        if let Err(status) = self.hand_to_room(from_a, room, true) {
            self.notify_transferor(from_a, status);
        }
    }

    /// The consultation call of an attended transfer bridged in `room` (the transferee's call
    /// moves its party there, see [`Input::PullToRoom`]): the other party of the transferor's
    /// dialog `keep` goes to the room too, and once it is in, the transferor gets a BYE here
    /// (as the target of an attended transfer ends the consultation dialog, RFC 5589 §7.2). No
    /// NOTIFY: the REFER was the other call's. A call that is not settled keeps its party.
    pub(super) fn on_pull_to_room(&mut self, room: RoomRef, keep: &str) {
        if self.session_changing() {
            tracing::warn!(room = %room.name, "the consultation call is not settled: its party stays");
            return;
        }
        let x_is_a = self.a_dialog.as_ref().is_some_and(|d| d.local_tag == keep);
        if let Err(status) = self.hand_to_room(x_is_a, room, false) {
            tracing::warn!(status, "the consultation call's party cannot be moved");
        }
    }

    /// Hands the party other than the transferor (leg A: `x_is_a`) to `room`; `referred`: the
    /// transferor hears the outcome by NOTIFY. `Err(481)` when that party has no dialog.
    fn hand_to_room(&mut self, x_is_a: bool, room: RoomRef, referred: bool) -> Result<(), u16> {
        let y_is_a = !x_is_a;
        let leg = if y_is_a {
            self.a_dialog
                .clone()
                .map(|d| (d, self.setup.from, self.setup.local))
        } else {
            self.winner
                .and_then(|w| self.forks.get(w))
                .and_then(|f| Some((f.dialog.clone()?, f.target.to, f.target.local)))
        };
        let Some((dialog, to, local)) = leg else {
            return Err(481);
        };
        tracing::info!(room = %room.name, leg = if y_is_a { "A" } else { "B" }, "moving the other party into a conference room");
        self.moving = Some(Moving {
            x_is_a,
            x_gone: false,
            referred,
        });
        let party = self.party_aor(y_is_a);
        let sbc = self.sbc_of(y_is_a).cloned();
        self.out.push_back(Output::ToRoom(Box::new(Handover {
            room,
            dialog,
            to,
            local,
            party,
            sbc,
        })));
        Ok(())
    }

    /// True while leg A's (`a`) or B's dialog is the room's (its device is being moved there).
    pub(super) fn held_by_room(&self, a: bool) -> bool {
        self.moving.as_ref().is_some_and(|m| m.x_is_a != a)
    }

    /// The room's word on the transferee (Y). Joined: the transferor gets NOTIFY `200` and a
    /// BYE, and the call ends (Y's dialog is the room's). Failed: Y's dialog is the call's
    /// again; the transferor gets the status and both keep the call, unless the transferor
    /// left meanwhile (Y is hung up) or Y's dialog ended (the transferor is hung up).
    pub(super) fn on_room_outcome(&mut self, now: Instant, outcome: RoomOutcome) {
        let Some(m) = self.moving.take() else {
            return;
        };
        let (x_is_a, y_is_a) = (m.x_is_a, !m.x_is_a);
        // The transferor is still in the call (not gone, not hung up by the gateway).
        let x_here = !m.x_gone && self.phase == Phase::Confirmed;
        let (status, y_gone) = match outcome {
            RoomOutcome::Joined => (200, true),
            RoomOutcome::Failed {
                status,
                local_seq,
                gone,
            } => {
                let d = if y_is_a {
                    self.a_dialog.as_mut()
                } else {
                    self.winner
                        .and_then(|w| self.forks.get_mut(w))
                        .and_then(|f| f.dialog.as_mut())
                };
                if let Some(d) = d {
                    d.local_seq = d.local_seq.max(local_seq);
                }
                (status, gone)
            }
        };
        if x_here && m.referred {
            self.notify_transferor(x_is_a, status);
        }
        tracing::info!(status, "the move into the conference room ended");
        if y_gone {
            // Y's dialog is the room's (or over): the call forgets it and ends with X; the
            // relay no longer plays music to Y's media address, which the room's mix now uses.
            self.music_off(y_is_a);
            if y_is_a {
                self.a_dialog = None;
            } else {
                self.winner = None;
            }
            self.ending(match outcome {
                RoomOutcome::Joined => EndReason::MovedToConference,
                _ if y_is_a => EndReason::CallerHungUp,
                _ => EndReason::CalleeHungUp,
            });
        } else if x_here {
            return;
        } else {
            self.ending(EndReason::TransferFailed);
        }
        if self.phase == Phase::Confirmed {
            self.hang_up(now, None);
        } else {
            // Hung up while Y was moving: what was left to BYE is Y.
            if !y_gone {
                if y_is_a {
                    self.bye_a();
                } else {
                    self.bye_b();
                }
            }
            self.end_or_linger_at(now);
        }
    }

    /// NOTIFY the transferor (leg A or B) of the transfer's progress: `status` as a sipfrag
    /// status line (RFC 3515 §2.4.5); a final one ends the implicit subscription.
    fn notify_transferor(&mut self, to_a: bool, status: u16) {
        let body = format!(
            "SIP/2.0 {status} {}\r\n",
            csps_sip::message::reason_phrase(status)
        );
        let state = if status >= 200 {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        self.send_in_dialog(
            to_a,
            Method::Notify,
            Some("message/sipfrag;version=2.0"),
            Bytes::from(body),
            None,
            &[("Event", "refer"), ("Subscription-State", state)],
        );
    }

    /// The transfer fork that sent request `tag`.
    pub(super) fn transfer_fork(&self, tag: u32) -> Option<usize> {
        self.transfer
            .as_ref()
            .and_then(|t| t.forks.iter().position(|f| f.tag == tag))
    }

    /// A BYE from the transferor while its transfer (or the transferee's move into a room)
    /// goes on: it continues without it (RFC 5589 §6: many phones hang up as soon as the
    /// REFER is accepted). True when it was.
    pub(super) fn transferor_left(&mut self, from_a: bool, fork: Option<usize>) -> bool {
        let x = match (self.transfer.as_mut(), self.moving.as_mut()) {
            (Some(t), _) => (t.x_is_a, &mut t.x_gone),
            (None, Some(m)) => (m.x_is_a, &mut m.x_gone),
            (None, None) => return false,
        };
        let (x_is_a, x_gone) = x;
        if x_is_a != from_a || (!from_a && fork != self.winner) || *x_gone {
            return false;
        }
        *x_gone = true;
        if from_a {
            self.former.extend(self.a_dialog.take());
        } else {
            // The old device's fork stays (its retransmitted BYE still matches) but no longer
            // carries the call.
            self.winner = None;
        }
        true
    }

    /// Ends a transfer in progress (the call is ending): its forks join the call's losing ones,
    /// which are cancelled, or hung up should they answer.
    pub(super) fn abandon_transfer(&mut self) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        self.retire_forks(t.forks);
    }

    /// Transfer forks that did not win: CANCEL the ringing ones (or once they ring), and keep
    /// them with the call's forks so a late answer is hung up and the call ends only when they
    /// are settled.
    fn retire_forks(&mut self, forks: Vec<Fork>) {
        for mut f in forks {
            if let Some((to, req)) = cancel_fork(&mut f, Some(COMPLETED_ELSEWHERE)) {
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
            }
            self.forks.push(f);
        }
    }

    pub(super) fn on_transfer_response(&mut self, now: Instant, i: usize, resp: Response) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let status = resp.status;
        if status < 200 {
            let f = &mut t.forks[i];
            if f.state == ForkState::Calling {
                f.state = ForkState::Proceeding;
            }
            return;
        }
        if status >= 300 {
            self.transfer_fork_failed(now, i, status);
            return;
        }
        let f = &mut t.forks[i];
        let Some((first, to, ack)) = ack_answer(f, &resp, &mut *self.rng) else {
            return;
        };
        self.out.push_back(Output::Stateless { to, req: ack });
        if !first {
            return;
        }
        f.state = ForkState::Answered;
        let rule = self
            .setup
            .srtp
            .leg(f.target.to.transport, f.target.sbc.is_some());
        let sdes = if t.x_is_a {
            &mut self.sdes_a
        } else {
            &mut self.sdes_b
        };
        let answer = is_sdp(&resp.headers, &resp.body)
            .then(|| Sdp::parse(&resp.body).ok())
            .flatten()
            .and_then(|a| sdp::check_answer(&t.offer, &a).ok().map(|idx| (a, idx)))
            .and_then(|(mut a, idx)| {
                let m = a.media.get_mut(idx)?;
                sdes.take_answer(rule, m).ok()?;
                Some((a, idx))
            });
        let Some((answer, idx)) = answer else {
            // No usable answer: this device cannot carry the call.
            tracing::info!("transfer target answered without a usable SDP answer");
            if let Some((to, req)) = fork_bye(&mut t.forks[i], None, &mut *self.rng) {
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
            }
            self.transfer_fork_failed(now, i, 488);
            return;
        };
        self.complete_transfer(i, answer, idx);
    }

    pub(super) fn transfer_fork_failed(&mut self, now: Instant, i: usize, status: u16) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let f = &mut t.forks[i];
        if !matches!(f.state, ForkState::Done(_)) {
            f.state = ForkState::Done(status);
        }
        if let Some(s) = all_refused(&t.forks) {
            self.fail_transfer(now, s);
        }
    }

    /// The transfer failed with `status`: the transferor learns it and keeps its call; when
    /// the transferor already left, the transferee is hung up.
    pub(super) fn fail_transfer(&mut self, now: Instant, status: u16) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        let (x_is_a, x_gone) = (t.x_is_a, t.x_gone);
        self.retire_forks(t.forks);
        if x_gone {
            self.ending(EndReason::TransferFailed);
            self.hang_up(now, None);
        } else {
            self.notify_transferor(x_is_a, status);
        }
    }

    /// The target's device `i` answered: it takes the transferor's place. The transferor gets
    /// the final NOTIFY and a BYE, the other devices a CANCEL, the relay's transferor side now
    /// faces the target, and the transferee is re-INVITEd with the target's media.
    fn complete_transfer(&mut self, i: usize, answer: Sdp, idx: usize) {
        let Some(mut t) = self.transfer.take() else {
            return;
        };
        let x_is_a = t.x_is_a;
        if !t.x_gone {
            self.notify_transferor(x_is_a, 200);
        }
        let new = t.forks.remove(i);
        let others = std::mem::take(&mut t.forks);
        let leave = (!t.x_gone).then_some(None);
        self.take_place(x_is_a, new, t.to, t.party, (answer, idx), leave, others);
    }

    /// `new` (a device that answered, or a phone whose INVITE replaced a leg) takes the place
    /// of leg A (`x_is_a`) or B, named `to` (party `party`) from now on: the old device gets a
    /// BYE (with its RFC 3326 reason) unless `leave` is `None` (it left already), the relay's
    /// side faces `new` at its media (`answer`, audio section `idx`), `others` are cancelled,
    /// and the other leg is re-INVITEd with the new media (sendrecv: a held party resumes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_place(
        &mut self,
        x_is_a: bool,
        new: Fork,
        to: String,
        party: String,
        (answer, idx): (Sdp, usize),
        leave: Option<Option<&'static str>>,
        others: Vec<Fork>,
    ) {
        if let Some(reason) = leave {
            let kept = self.bye_reason;
            self.bye_reason = reason.or(kept);
            if x_is_a {
                self.bye_a();
            } else {
                self.bye_b();
            }
            self.bye_reason = kept;
        }
        let teams = new.target.sbc.is_some();
        let ip = new.target.to.addr.ip();
        let target_addr = answer.rtp_addr(idx);
        if x_is_a {
            self.former.extend(self.a_dialog.take());
            self.a_dialog = new.dialog;
            self.setup.from = new.target.to;
            self.setup.local = new.target.local;
            self.a_contact = contact_for(
                new.target.to.transport,
                new.target.local,
                new.target.sbc.as_ref(),
            );
            self.setup.a_sbc = new.target.sbc;
            self.setup.caller = to;
            self.setup.caller_party = None;
            self.telephone_events = (None, None);
            self.out
                .push_back(Output::Media(MediaChange::A(target_addr, ip)));
        } else {
            self.forks.push(new);
            self.winner = Some(self.forks.len() - 1);
            self.setup.callee = to;
            self.b_answer = Some(answer.clone());
            self.telephone_events = (None, None);
            self.out
                .push_back(Output::Media(MediaChange::B(target_addr, ip)));
        }
        self.retire_forks(others);
        // The other party gets the new media as a new offer (sendrecv: a held party resumes),
        // at the relay's side facing it.
        let to_a = !x_is_a;
        let mut offer = answer;
        sdp::rewrite_address(&mut offer, idx, self.relay_facing(to_a));
        if let Some(m) = offer.media.get_mut(idx) {
            m.set_direction(sdp::Direction::SendRecv);
        }
        let body = self.offer_body(to_a, self.srtp_rule(to_a), &offer);
        if let Some((tag, seq)) = self.send_in_dialog(
            to_a,
            Method::Invite,
            Some("application/sdp"),
            body,
            None,
            &[],
        ) {
            self.own_offer = Some(OwnOffer {
                to_a,
                tag,
                seq,
                offer,
                acked: false,
            });
        }
        self.out.push_back(Output::Transferred {
            a: x_is_a,
            party,
            teams,
        });
    }

    /// The transferee's answer to the gateway's re-INVITE: ACK it and point the relay at the
    /// transferee's (possibly new) address. A refusal leaves the session as it was.
    pub(super) fn on_own_offer_response(&mut self, resp: Response) {
        let Some(to_a) = self.own_offer.as_ref().map(|o| o.to_a) else {
            return;
        };
        let rule = self.srtp_rule(to_a);
        let Some(o) = self.own_offer.as_mut() else {
            return;
        };
        if resp.status < 200 {
            return;
        }
        let (to_a, seq) = (o.to_a, o.seq);
        if resp.status >= 300 {
            tracing::info!(
                status = resp.status,
                "the transferee refused the gateway's re-INVITE"
            );
            self.own_offer = None;
            return;
        }
        let first = !std::mem::replace(&mut o.acked, true);
        let addr = is_sdp(&resp.headers, &resp.body)
            .then(|| Sdp::parse(&resp.body).ok())
            .flatten()
            .and_then(|mut a| {
                let idx = sdp::check_answer(&o.offer, &a).ok()?;
                let sdes = if to_a {
                    &mut self.sdes_a
                } else {
                    &mut self.sdes_b
                };
                sdes.take_answer(rule, a.media.get_mut(idx)?).ok()?;
                Some(a.rtp_addr(idx))
            });
        // Every 2xx is ACKed (a retransmission means our ACK was lost).
        self.ack_in_dialog(to_a, seq, None);
        if !first {
            return;
        }
        match addr {
            Some(addr) => {
                self.telephone_events = (None, None);
                self.media_for(to_a, addr)
            }
            None => {
                tracing::info!("the transferee's answer to the gateway's re-INVITE is unusable")
            }
        }
    }
}
