//! Requests inside the call's dialogs: which leg sent one, and the gateway's own requests there.

use std::time::Instant;

use bytes::Bytes;
use csps_sip::transaction::TxnKey;
use csps_sip::{Headers, Method, Remote, Request};

use super::messages::{allow_for, via, via_for};
use super::timers::copy_timer_headers;
use super::{Call, EndReason, Output, Phase};

impl Call {
    /// Which leg a request inside the call comes from: leg A (`true`) or the fork whose dialog
    /// it names; `None` after answering it (481 outside the call's dialogs, 500 for a CSeq out
    /// of order, 200 for the BYE of a transferor that already left).
    pub(super) fn leg_of(&mut self, key: TxnKey, req: &Request) -> Option<(bool, Option<usize>)> {
        let from_a = self.a_dialog.as_ref().is_some_and(|d| d.matches(req));
        let fork = self
            .forks
            .iter()
            .position(|f| f.dialog.as_ref().is_some_and(|d| d.matches(req)));
        if !from_a && fork.is_none() {
            let r = if req.method == Method::Bye && self.former.iter().any(|d| d.matches(req)) {
                req.response(200, "OK")
            } else {
                req.response(481, "Call/Transaction Does Not Exist")
            };
            self.out.push_back(Output::Respond { key, resp: r });
            return None;
        }
        let seq_ok = if from_a {
            self.a_dialog
                .as_mut()
                .is_some_and(|d| d.accept_remote_seq(req))
        } else {
            fork.and_then(|i| self.forks[i].dialog.as_mut())
                .is_some_and(|d| d.accept_remote_seq(req))
        };
        if !seq_ok {
            let r = req.response(500, "Server Internal Error");
            self.out.push_back(Output::Respond { key, resp: r });
            return None;
        }
        Some((from_a, fork))
    }

    pub(super) fn on_request(&mut self, now: Instant, key: TxnKey, _from: Remote, req: Request) {
        if req.method == Method::Prack {
            return self.on_prack(now, key, &req);
        }
        let Some((from_a, fork)) = self.leg_of(key, &req) else {
            return;
        };
        match req.method {
            Method::Bye => {
                self.out.push_back(Output::Respond {
                    key,
                    resp: req.response(200, "OK"),
                });
                if self.transferor_left(from_a, fork) {
                    return;
                }
                if matches!(self.phase, Phase::Answered | Phase::Confirmed)
                    && (from_a || fork == self.winner)
                {
                    self.abandon_transfer();
                    self.release_b_ack();
                }
                if matches!(self.phase, Phase::Answered | Phase::Confirmed) {
                    if from_a {
                        self.bye_b();
                    } else if fork == self.winner {
                        self.bye_a();
                    } else if let Some(i) = fork {
                        // A late fork that we are already hanging up.
                        let _ = i;
                    }
                    if from_a || fork == self.winner {
                        self.ending(if from_a {
                            EndReason::CallerHungUp
                        } else {
                            EndReason::CalleeHungUp
                        });
                        self.a_ok = None;
                        self.a_ok_next = None;
                        self.end_or_linger_at(now);
                    }
                }
            }
            Method::Options => {
                self.out.push_back(Output::Respond {
                    key,
                    resp: req.response(200, "OK"),
                });
            }
            Method::Invite | Method::Update | Method::Info
                if !from_a && (fork != self.winner || self.winner.is_none()) =>
            {
                // A device that lost the race (being hung up) has no session to modify.
                let r = req.response(481, "Call/Transaction Does Not Exist");
                self.out.push_back(Output::Respond { key, resp: r });
            }
            Method::Invite | Method::Update | Method::Info if self.moving.is_some() => {
                // The other party is being moved into a room: nothing to modify or relay to.
                let r = req.response(491, "Request Pending");
                self.out.push_back(Output::Respond { key, resp: r });
            }
            Method::Invite | Method::Update => self.on_reoffer(now, key, from_a, req),
            Method::Info => self.on_info(key, from_a, req),
            _ => {
                let mut r = req.response(501, "Not Implemented");
                r.headers.push("Allow", crate::calls::ALLOW_IN_DIALOG);
                self.out.push_back(Output::Respond { key, resp: r });
            }
        }
    }

    /// Builds a request in the dialog of leg A (`to_a`) or of the answered device, sends it, and
    /// returns its tag and CSeq number; `None` when that dialog does not exist.
    pub(super) fn send_in_dialog(
        &mut self,
        to_a: bool,
        method: Method,
        content_type: Option<&str>,
        body: Bytes,
        timer_headers: Option<&Headers>,
        extra: &[(&str, &str)],
    ) -> Option<(u32, u32)> {
        if self.held_by_room(to_a) {
            return None;
        }
        let tag = self.tag();
        let allow = if to_a {
            allow_for(self.setup.a_sbc.as_ref())
        } else {
            allow_for(self.winner.and_then(|w| self.forks[w].target.sbc.as_ref()))
        };
        let (via, to, d) = if to_a {
            let v = via_for(
                self.setup.from.transport,
                self.setup.local,
                self.setup.a_sbc.as_ref(),
                &mut *self.rng,
            );
            (v, self.setup.from, self.a_dialog.as_mut()?)
        } else {
            let w = self.winner?;
            let v = via(&self.forks[w].target, &mut *self.rng);
            let f = &mut self.forks[w];
            (v, f.target.to, f.dialog.as_mut()?)
        };
        let mut req = d.request(method, &via);
        let seq = d.local_seq;
        if matches!(req.method, Method::Invite | Method::Update) {
            req.headers.push("Allow", allow);
        }
        if let Some(h) = timer_headers {
            copy_timer_headers(h, &mut req.headers);
        }
        for (name, value) in extra {
            req.headers.push(name, *value);
        }
        if let Some(ct) = content_type.filter(|_| !body.is_empty()) {
            req.headers.push("Content-Type", ct);
        }
        req.body = body;
        self.out.push_back(Output::Send { tag, to, req });
        Some((tag, seq))
    }

    /// The ACK for a 2xx to our re-INVITE with CSeq `seq`, in leg A's (`to_a`) or B's dialog.
    pub(super) fn ack_in_dialog(&mut self, to_a: bool, seq: u32, body: Option<Bytes>) {
        if self.held_by_room(to_a) {
            return;
        }
        let (via, to, d) = if to_a {
            let v = via_for(
                self.setup.from.transport,
                self.setup.local,
                self.setup.a_sbc.as_ref(),
                &mut *self.rng,
            );
            (v, self.setup.from, self.a_dialog.as_ref())
        } else {
            let Some(w) = self.winner else { return };
            let v = via(&self.forks[w].target, &mut *self.rng);
            let f = &self.forks[w];
            (v, f.target.to, f.dialog.as_ref())
        };
        let Some(d) = d else { return };
        let mut ack = d.ack(seq, &via);
        if let Some(b) = body {
            ack.headers.push("Content-Type", "application/sdp");
            ack.body = b;
        }
        self.out.push_back(Output::Stateless { to, req: ack });
    }
}
