//! Hanging up: BYEs to the legs, CANCELs to ringing forks, the end once nothing is outstanding.

use std::time::Instant;

use csps_sip::{Method, Remote, Request};
use rand::RngCore;

use super::messages::{via, via_for};
use super::{Call, Fork, ForkState, LINGER, Output, Phase};

/// A BYE in fork `f`'s dialog (with an RFC 3326 `reason`); `None` before it has a dialog.
pub(super) fn fork_bye(
    f: &mut Fork,
    reason: Option<&str>,
    rng: &mut dyn RngCore,
) -> Option<(Remote, Request)> {
    let v = via(&f.target, rng);
    let d = f.dialog.as_mut()?;
    let mut req = d.request(Method::Bye, &v);
    if let Some(r) = reason {
        req.headers.push("Reason", r);
    }
    Some((f.target.to, req))
}

impl Call {
    /// Ends the call from the gateway's side: BYE both confirmed dialogs, or answer a ringing
    /// caller with `ringing_status` and cancel the forks.
    pub(super) fn hang_up(&mut self, now: Instant, ringing_status: Option<u16>) {
        match self.phase {
            Phase::Ringing => {
                let s = ringing_status.unwrap_or(480);
                let r = self.a_response(s, csps_sip::message::reason_phrase(s));
                self.out.push_back(Output::Respond {
                    key: self.setup.key,
                    resp: r,
                });
                self.cancel_forks(now, None);
                self.end_or_linger_at(now);
            }
            Phase::Answered | Phase::Confirmed => {
                self.abandon_transfer();
                self.release_b_ack();
                self.bye_a();
                self.bye_b();
                self.end_or_linger_at(now);
            }
            Phase::Ending | Phase::Ended => {}
        }
    }

    pub(super) fn bye_a(&mut self) {
        if self.held_by_room(true) {
            return;
        }
        let tag = self.tag();
        let v = via_for(
            self.setup.from.transport,
            self.setup.local,
            self.setup.a_sbc.as_ref(),
            &mut *self.rng,
        );
        if let Some(d) = self.a_dialog.as_mut() {
            let mut req = d.request(Method::Bye, &v);
            if let Some(r) = self.bye_reason {
                req.headers.push("Reason", r);
            }
            self.pending_byes.push(tag);
            self.out.push_back(Output::Send {
                tag,
                to: self.setup.from,
                req,
            });
        }
    }

    pub(super) fn bye_b(&mut self) {
        if self.held_by_room(false) {
            return;
        }
        if let Some(w) = self.winner {
            self.bye_fork(w);
        }
    }

    pub(super) fn bye_fork(&mut self, i: usize) {
        if let Some((to, req)) = fork_bye(&mut self.forks[i], self.bye_reason, &mut *self.rng) {
            let tag = self.tag();
            self.pending_byes.push(tag);
            self.out.push_back(Output::Send { tag, to, req });
        }
    }

    pub(super) fn bye_done(&mut self, tag: u32) {
        self.pending_byes.retain(|t| *t != tag);
        if self.phase == Phase::Ending && self.settled() {
            self.finish();
        }
    }

    /// True when nothing is outstanding: no BYE unanswered, no fork still ringing, no leg
    /// on its way into a room.
    fn settled(&self) -> bool {
        self.pending_byes.is_empty()
            && self.moving.is_none()
            && self.joining.is_none()
            && self
                .forks
                .iter()
                .all(|f| !matches!(f.state, ForkState::Calling | ForkState::Proceeding))
    }

    pub(super) fn finish(&mut self) {
        if let Some(j) = self.joining.take() {
            // Still no ACK from an offerless replacing phone: its dialog ends with the call.
            self.bye_joining(j.phone);
        }
        if self.phase != Phase::Ended {
            self.phase = Phase::Ended;
            self.out.push_back(Output::Ended);
        }
    }

    pub(super) fn end_or_linger(&mut self) {
        self.phase = Phase::Ending;
        if self.settled() {
            self.finish();
        }
    }

    pub(super) fn end_or_linger_at(&mut self, now: Instant) {
        self.linger_deadline = Some(now + LINGER);
        self.end_or_linger();
    }

    pub(super) fn end_check(&mut self) {
        if self.phase == Phase::Ending && self.settled() {
            self.finish();
        }
    }
}
