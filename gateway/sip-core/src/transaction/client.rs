//! Client transactions: INVITE (RFC 3261 §17.1.1 with RFC 6026 §8.4's Accepted state) and
//! non-INVITE (§17.1.2). Each state holds only what it still needs: the request while it may be
//! retransmitted or an ACK/CANCEL built from it, the ACK while final responses may be repeated.
//! A transition consumes the old state and returns the new one.

use std::time::Duration;

use crate::message::{Message, Request, Response};

use super::{Ctx, Event, Machine, Next, Txn, TxnTimer, key};

/// Client INVITE states (§17.1.1.2, Figure 5 as amended by RFC 6026 Figure 3).
pub(super) enum ClientInvite {
    /// Sent; Timer A retransmits on UDP, Timer B gives up.
    Calling(Box<Request>),
    /// A provisional response arrived; the INVITE is kept to build the ACK or a CANCEL.
    Proceeding(Box<Request>),
    /// A 3xx–6xx arrived and was ACKed; the ACK is resent for each retransmission (Timer D).
    Completed(Box<Request>),
    /// A 2xx arrived (RFC 6026 §8.4); further 2xx go to the app until Timer M.
    Accepted,
}

/// Client non-INVITE states (§17.1.2.2, Figure 6).
pub(super) enum ClientNonInvite {
    /// Sent; Timer E retransmits on UDP (request kept only there), Timer F gives up.
    Trying(Option<Box<Request>>),
    /// A provisional response arrived; Timer E keeps retransmitting at T2.
    Proceeding(Option<Box<Request>>),
    /// A final response arrived; retransmissions are absorbed until Timer K.
    Completed,
}

impl Txn {
    /// Sends the request and arms the first timers.
    pub(super) fn client_start(&mut self, cx: &mut Ctx<'_>, req: Request) {
        let (t1, t1x64) = (cx.cfg.t1, cx.cfg.t1x64());
        let invite = matches!(self.machine, Machine::ClientInvite(_));
        self.send(cx, Message::Request(req));
        if invite {
            // §17.1.1.2: Timer A = T1 on unreliable transports; Timer B = 64*T1 always.
            if !self.reliable() {
                self.arm(cx, TxnTimer::A, t1);
            }
            self.arm(cx, TxnTimer::B, t1x64);
        } else {
            // §17.1.2.2: Timer E = T1 on unreliable transports; Timer F = 64*T1 always.
            if !self.reliable() {
                self.arm(cx, TxnTimer::E, t1);
            }
            self.arm(cx, TxnTimer::F, t1x64);
        }
    }

    fn take_client_invite(&mut self) -> Option<ClientInvite> {
        match std::mem::replace(
            &mut self.machine,
            Machine::ClientInvite(ClientInvite::Accepted),
        ) {
            Machine::ClientInvite(s) => Some(s),
            other => {
                self.machine = other;
                None
            }
        }
    }

    fn take_client_non_invite(&mut self) -> Option<ClientNonInvite> {
        match std::mem::replace(
            &mut self.machine,
            Machine::ClientNonInvite(ClientNonInvite::Completed),
        ) {
            Machine::ClientNonInvite(s) => Some(s),
            other => {
                self.machine = other;
                None
            }
        }
    }

    pub(super) fn client_invite_response(&mut self, cx: &mut Ctx<'_>, resp: Response) -> Next {
        let Some(state) = self.take_client_invite() else {
            return Next::Stay;
        };
        let key = self.key;
        let (state, next) = match (state, resp.status) {
            // §17.1.1.2: a provisional response in Calling moves to Proceeding, where A and B
            // stop; every provisional response goes up. Proceeding has no RFC timer of its own,
            // so the answer guard plays Timer C's role (§16.6 step 11, restarted by each 1xx)
            // lest a peer that never answers leave the transaction behind.
            (ClientInvite::Calling(req) | ClientInvite::Proceeding(req), 100..=199) => {
                self.disarm(cx, TxnTimer::A);
                self.disarm(cx, TxnTimer::B);
                self.arm(cx, TxnTimer::Guard, cx.cfg.invite_answer_timeout);
                Txn::event(cx, Event::Response { key, resp });
                (ClientInvite::Proceeding(req), Next::Stay)
            }
            // RFC 6026 §8.4: a 2xx in Calling or Proceeding goes up and moves to Accepted,
            // which Timer M (64*T1) ends.
            (ClientInvite::Calling(_) | ClientInvite::Proceeding(_), 200..=299) => {
                self.disarm(cx, TxnTimer::A);
                self.disarm(cx, TxnTimer::B);
                self.disarm(cx, TxnTimer::Guard);
                self.arm(cx, TxnTimer::M, cx.cfg.t1x64());
                Txn::event(cx, Event::Response { key, resp });
                (ClientInvite::Accepted, Next::Stay)
            }
            // §17.1.1.2: a 3xx–6xx is ACKed (§17.1.1.3), goes up, and moves to Completed with
            // Timer D (≥ 32 s on UDP; 0 on reliable transports, i.e. straight to Terminated).
            (ClientInvite::Calling(req) | ClientInvite::Proceeding(req), _) => {
                self.disarm(cx, TxnTimer::A);
                self.disarm(cx, TxnTimer::B);
                self.disarm(cx, TxnTimer::Guard);
                let ack = key::ack_for(&req, &resp);
                drop(req);
                self.send(cx, Message::Request(ack.clone()));
                Txn::event(cx, Event::Response { key, resp });
                if self.reliable() {
                    (ClientInvite::Completed(Box::new(ack)), Next::Terminate)
                } else {
                    let d = Duration::from_secs(32).max(cx.cfg.t1x64());
                    self.arm(cx, TxnTimer::D, d);
                    (ClientInvite::Completed(Box::new(ack)), Next::Stay)
                }
            }
            // §17.1.1.2: a retransmitted 3xx–6xx in Completed gets the ACK again, not the app.
            (ClientInvite::Completed(ack), 300..=699) => {
                self.send(cx, Message::Request((*ack).clone()));
                (ClientInvite::Completed(ack), Next::Stay)
            }
            (s @ ClientInvite::Completed(_), _) => (s, Next::Stay),
            // RFC 6026 §8.4: in Accepted every 2xx (retransmissions, forks) goes up; other
            // responses are absorbed.
            (ClientInvite::Accepted, 200..=299) => {
                Txn::event(cx, Event::Response { key, resp });
                (ClientInvite::Accepted, Next::Stay)
            }
            (ClientInvite::Accepted, _) => (ClientInvite::Accepted, Next::Stay),
        };
        self.machine = Machine::ClientInvite(state);
        next
    }

    pub(super) fn client_invite_timer(&mut self, cx: &mut Ctx<'_>, t: TxnTimer) -> Next {
        let Machine::ClientInvite(state) = &self.machine else {
            return Next::Stay;
        };
        match (t, state) {
            // §17.1.1.2: Timer A retransmits the INVITE and doubles its interval.
            (TxnTimer::A, ClientInvite::Calling(req)) => {
                let msg = Message::Request((**req).clone());
                self.send(cx, msg);
                self.interval = self.interval.saturating_mul(2);
                self.arm(cx, TxnTimer::A, self.interval);
                Next::Stay
            }
            // §17.1.1.2: Timer B in Calling: the TU is told of the timeout, then Terminated.
            // Guard in Proceeding (Timer C's role): no final response came; the same for the TU.
            (TxnTimer::B, ClientInvite::Calling(_))
            | (TxnTimer::Guard, ClientInvite::Proceeding(_)) => {
                Txn::event(cx, Event::Timeout { key: self.key });
                Next::Terminate
            }
            // §17.1.1.2: Timer D ends Completed; RFC 6026 §8.4: Timer M ends Accepted.
            (TxnTimer::D, ClientInvite::Completed(_)) | (TxnTimer::M, ClientInvite::Accepted) => {
                Next::Terminate
            }
            _ => Next::Stay,
        }
    }

    pub(super) fn client_non_invite_response(&mut self, cx: &mut Ctx<'_>, resp: Response) -> Next {
        let Some(state) = self.take_client_non_invite() else {
            return Next::Stay;
        };
        let key = self.key;
        let (state, next) = match (state, resp.status) {
            // §17.1.2.2: a provisional response moves Trying to Proceeding and goes up.
            (ClientNonInvite::Trying(req) | ClientNonInvite::Proceeding(req), 100..=199) => {
                Txn::event(cx, Event::Response { key, resp });
                (ClientNonInvite::Proceeding(req), Next::Stay)
            }
            // §17.1.2.2: a final response goes up; Completed with Timer K (T4 on UDP, 0 on
            // reliable transports, i.e. straight to Terminated). The request is dropped.
            (ClientNonInvite::Trying(_) | ClientNonInvite::Proceeding(_), _) => {
                self.disarm(cx, TxnTimer::E);
                self.disarm(cx, TxnTimer::F);
                Txn::event(cx, Event::Response { key, resp });
                if self.reliable() {
                    (ClientNonInvite::Completed, Next::Terminate)
                } else {
                    self.arm(cx, TxnTimer::K, cx.cfg.t4);
                    (ClientNonInvite::Completed, Next::Stay)
                }
            }
            // §17.1.2.2: retransmitted responses in Completed are absorbed.
            (ClientNonInvite::Completed, _) => (ClientNonInvite::Completed, Next::Stay),
        };
        self.machine = Machine::ClientNonInvite(state);
        next
    }

    pub(super) fn client_non_invite_timer(&mut self, cx: &mut Ctx<'_>, t: TxnTimer) -> Next {
        let Machine::ClientNonInvite(state) = &self.machine else {
            return Next::Stay;
        };
        match (t, state) {
            // §17.1.2.2: Timer E in Trying retransmits and doubles up to T2; in Proceeding it
            // retransmits every T2.
            (TxnTimer::E, ClientNonInvite::Trying(req) | ClientNonInvite::Proceeding(req)) => {
                let next = match state {
                    ClientNonInvite::Trying(_) => self.interval.saturating_mul(2).min(cx.cfg.t2),
                    _ => cx.cfg.t2,
                };
                if let Some(req) = req {
                    let msg = Message::Request((**req).clone());
                    self.send(cx, msg);
                }
                self.interval = next;
                self.arm(cx, TxnTimer::E, next);
                Next::Stay
            }
            // §17.1.2.2: Timer F in Trying or Proceeding: timeout to the TU, then Terminated.
            (TxnTimer::F, ClientNonInvite::Trying(_) | ClientNonInvite::Proceeding(_)) => {
                Txn::event(cx, Event::Timeout { key: self.key });
                Next::Terminate
            }
            // §17.1.2.2: Timer K ends Completed.
            (TxnTimer::K, ClientNonInvite::Completed) => Next::Terminate,
            _ => Next::Stay,
        }
    }
}
