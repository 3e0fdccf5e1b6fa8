//! Server transactions: INVITE (RFC 3261 §17.2.1 with RFC 6026 §8.5–§8.7's Accepted state) and
//! non-INVITE (§17.2.2). A server transaction keeps only the last response it may have to repeat
//! (a non-INVITE final response in wire form: it waits out Timer J, 32 s, under every REGISTER);
//! the request itself goes to the app. A transition consumes the old state and returns the new one.

use bytes::Bytes;

use crate::message::{Message, Request, Response};
use crate::transport::Remote;

use super::{Ctx, Event, Machine, Next, Output, Txn, TxnError, TxnTimer, key};

/// Server INVITE states (§17.2.1, Figure 7 as amended by RFC 6026 Figure 5).
pub(super) enum ServerInvite {
    /// Waiting for the app; holds the last provisional response (at first the 100 Trying the
    /// layer sends itself unless the app answers within `trying_delay`).
    Proceeding(Box<Response>),
    /// A 3xx–6xx was sent; Timer G repeats it on UDP until the ACK, Timer H gives up.
    Completed(Box<Response>),
    /// The ACK arrived; its retransmissions are absorbed until Timer I.
    Confirmed,
    /// A 2xx was sent (RFC 6026 §8.5); INVITE retransmissions are absorbed, ACKs and the app's
    /// own 2xx retransmissions pass, until Timer L.
    Accepted,
}

/// Server non-INVITE states (§17.2.2, Figure 8).
pub(super) enum ServerNonInvite {
    /// Waiting for the app; request retransmissions are absorbed.
    Trying,
    /// A provisional response was sent; retransmissions get it again.
    Proceeding(Box<Response>),
    /// A final response was sent; retransmissions get it again until Timer J.
    Completed {
        /// Its status code.
        status: u16,
        /// The response in wire form.
        bytes: Bytes,
    },
}

impl Txn {
    /// Arms the timers of a new server transaction.
    pub(super) fn server_start(&mut self, cx: &mut Ctx<'_>) {
        match &self.machine {
            Machine::ServerInvite(ServerInvite::Proceeding(trying)) => {
                // §17.2.1: send 100 Trying unless the TU answers within 200 ms.
                if cx.cfg.trying_delay.is_zero() {
                    let msg = Message::Response((**trying).clone());
                    self.send(cx, msg);
                } else {
                    self.arm(cx, TxnTimer::Trying, cx.cfg.trying_delay);
                }
                self.arm(cx, TxnTimer::Guard, cx.cfg.invite_answer_timeout);
            }
            // No RFC timer bounds Trying; the client gives up after 64*T1 (Timer F), so an
            // unanswered server transaction is dropped then.
            _ => self.arm(cx, TxnTimer::Guard, cx.cfg.t1x64()),
        }
    }

    fn take_server_invite(&mut self) -> Option<ServerInvite> {
        match std::mem::replace(
            &mut self.machine,
            Machine::ServerInvite(ServerInvite::Confirmed),
        ) {
            Machine::ServerInvite(s) => Some(s),
            other => {
                self.machine = other;
                None
            }
        }
    }

    fn take_server_non_invite(&mut self) -> Option<ServerNonInvite> {
        match std::mem::replace(
            &mut self.machine,
            Machine::ServerNonInvite(ServerNonInvite::Trying),
        ) {
            Machine::ServerNonInvite(s) => Some(s),
            other => {
                self.machine = other;
                None
            }
        }
    }

    /// A retransmission of the request that created this transaction (not ACK, not a new CANCEL).
    pub(super) fn server_retransmission(&mut self, cx: &mut Ctx<'_>, from: Remote) {
        // Answer where the latest copy came from (a NAT rebinding or a new connection).
        self.remote = from;
        let repeat = match &self.machine {
            // §17.2.1: an INVITE retransmission in Proceeding gets the last provisional response
            // (the 100 Trying now, if the layer was still waiting to send it).
            Machine::ServerInvite(ServerInvite::Proceeding(r)) => Some(r),
            // §17.2.1: in Completed it gets the final response again.
            Machine::ServerInvite(ServerInvite::Completed(r)) => Some(r),
            // §17.2.1 / RFC 6026 §8.7: absorbed in Confirmed and Accepted.
            Machine::ServerInvite(_) => None,
            // §17.2.2: absorbed in Trying; the last response again in Proceeding and Completed.
            Machine::ServerNonInvite(ServerNonInvite::Trying) => None,
            Machine::ServerNonInvite(ServerNonInvite::Proceeding(r)) => Some(r),
            Machine::ServerNonInvite(ServerNonInvite::Completed { status, bytes }) => {
                cx.out.push_back(Output::Resend {
                    to: self.remote,
                    status: *status,
                    bytes: bytes.clone(),
                });
                None
            }
            _ => None,
        };
        if let Some(r) = repeat {
            let msg = Message::Response((**r).clone());
            self.send(cx, msg);
            if matches!(
                self.machine,
                Machine::ServerInvite(ServerInvite::Proceeding(_))
            ) {
                self.disarm(cx, TxnTimer::Trying);
            }
        }
    }

    /// An ACK that matched this INVITE server transaction.
    pub(super) fn server_ack(&mut self, cx: &mut Ctx<'_>, from: Remote, ack: Request) -> Next {
        let Some(state) = self.take_server_invite() else {
            Txn::event(cx, Event::Ack { from, req: ack });
            return Next::Stay;
        };
        let (state, next) = match state {
            // §17.2.3 (RFC 2543 matching): the ACK's To tag must be the final response's.
            ServerInvite::Completed(r)
                if !key::is_rfc3261(&ack)
                    && key::to_tag(&ack.headers) != key::to_tag(&r.headers) =>
            {
                Txn::event(cx, Event::Ack { from, req: ack });
                (ServerInvite::Completed(r), Next::Stay)
            }
            // §17.2.1: the ACK for a 3xx–6xx moves Completed to Confirmed (G and H stop) and is
            // absorbed; Timer I = T4 on UDP, 0 on reliable transports (straight to Terminated).
            ServerInvite::Completed(_) => {
                self.disarm(cx, TxnTimer::G);
                self.disarm(cx, TxnTimer::H);
                if self.reliable() {
                    (ServerInvite::Confirmed, Next::Terminate)
                } else {
                    self.arm(cx, TxnTimer::I, cx.cfg.t4);
                    (ServerInvite::Confirmed, Next::Stay)
                }
            }
            // §17.2.1: ACK retransmissions in Confirmed are absorbed.
            ServerInvite::Confirmed => (ServerInvite::Confirmed, Next::Stay),
            // RFC 6026 §8.7: in Accepted the ACK (to the 2xx) goes up to the TU.
            ServerInvite::Accepted => {
                Txn::event(cx, Event::Ack { from, req: ack });
                (ServerInvite::Accepted, Next::Stay)
            }
            // No final response yet: not an ACK this transaction can absorb; the app decides.
            s @ ServerInvite::Proceeding(_) => {
                Txn::event(cx, Event::Ack { from, req: ack });
                (s, Next::Stay)
            }
        };
        self.machine = Machine::ServerInvite(state);
        next
    }

    pub(super) fn server_invite_respond(
        &mut self,
        cx: &mut Ctx<'_>,
        resp: Response,
    ) -> Result<Next, TxnError> {
        let Some(state) = self.take_server_invite() else {
            return Err(TxnError::NotServer);
        };
        let status = resp.status;
        let (state, next) = match (state, status) {
            // §17.2.1: a provisional response from the TU is sent and kept in Proceeding. The
            // answer guard restarts, as Timer C does on a proxy (§16.6 step 11).
            (ServerInvite::Proceeding(_), 100..=199) => {
                self.disarm(cx, TxnTimer::Trying);
                self.arm(cx, TxnTimer::Guard, cx.cfg.invite_answer_timeout);
                self.send(cx, Message::Response(resp.clone()));
                (ServerInvite::Proceeding(Box::new(resp)), Next::Stay)
            }
            // RFC 6026 §8.5: a 2xx is sent and moves Proceeding to Accepted with Timer L = 64*T1.
            // The 2xx is not kept: its retransmission is the TU's job (§13.3.1.4).
            (ServerInvite::Proceeding(_), 200..=299) => {
                self.disarm(cx, TxnTimer::Trying);
                self.disarm(cx, TxnTimer::Guard);
                self.send(cx, Message::Response(resp));
                self.arm(cx, TxnTimer::L, cx.cfg.t1x64());
                (ServerInvite::Accepted, Next::Stay)
            }
            // §17.2.1: a 3xx–6xx is sent and moves Proceeding to Completed; Timer G = T1 on UDP
            // repeats it, Timer H = 64*T1 waits for the ACK.
            (ServerInvite::Proceeding(_), _) => {
                self.disarm(cx, TxnTimer::Trying);
                self.disarm(cx, TxnTimer::Guard);
                self.send(cx, Message::Response(resp.clone()));
                if !self.reliable() {
                    self.interval = cx.cfg.t1;
                    self.arm(cx, TxnTimer::G, cx.cfg.t1);
                }
                self.arm(cx, TxnTimer::H, cx.cfg.t1x64());
                (ServerInvite::Completed(Box::new(resp)), Next::Stay)
            }
            // RFC 6026 §8.7: in Accepted the TU's 2xx retransmissions are sent.
            (ServerInvite::Accepted, 200..=299) => {
                self.send(cx, Message::Response(resp));
                (ServerInvite::Accepted, Next::Stay)
            }
            (s, _) => {
                self.machine = Machine::ServerInvite(s);
                return Err(TxnError::WrongState);
            }
        };
        self.machine = Machine::ServerInvite(state);
        Ok(next)
    }

    pub(super) fn server_invite_timer(&mut self, cx: &mut Ctx<'_>, t: TxnTimer) -> Next {
        let Machine::ServerInvite(state) = &self.machine else {
            return Next::Stay;
        };
        match (t, state) {
            // §17.2.1: the TU did not answer within 200 ms: send the 100 Trying.
            (TxnTimer::Trying, ServerInvite::Proceeding(trying)) => {
                let msg = Message::Response((**trying).clone());
                self.send(cx, msg);
                Next::Stay
            }
            // §17.2.1: Timer G repeats the final response, doubling up to T2.
            (TxnTimer::G, ServerInvite::Completed(r)) => {
                let msg = Message::Response((**r).clone());
                self.send(cx, msg);
                self.interval = self.interval.saturating_mul(2).min(cx.cfg.t2);
                self.arm(cx, TxnTimer::G, self.interval);
                Next::Stay
            }
            // §17.2.1: Timer H: the ACK never came; a transaction failure for the TU.
            // Guard: the app never gave a final response; drop the transaction and say so.
            (TxnTimer::H, ServerInvite::Completed(_))
            | (TxnTimer::Guard, ServerInvite::Proceeding(_)) => {
                Txn::event(cx, Event::Timeout { key: self.key });
                Next::Terminate
            }
            // §17.2.1: Timer I ends Confirmed; RFC 6026 §8.7: Timer L ends Accepted.
            (TxnTimer::I, ServerInvite::Confirmed) | (TxnTimer::L, ServerInvite::Accepted) => {
                Next::Terminate
            }
            _ => Next::Stay,
        }
    }

    pub(super) fn server_non_invite_respond(
        &mut self,
        cx: &mut Ctx<'_>,
        resp: Response,
    ) -> Result<Next, TxnError> {
        let Some(state) = self.take_server_non_invite() else {
            return Err(TxnError::NotServer);
        };
        let (state, next) = match (state, resp.status) {
            // §17.2.2: a provisional response from the TU is sent; Trying moves to Proceeding.
            (ServerNonInvite::Trying | ServerNonInvite::Proceeding(_), 100..=199) => {
                self.send(cx, Message::Response(resp.clone()));
                (ServerNonInvite::Proceeding(Box::new(resp)), Next::Stay)
            }
            // §17.2.2: a final response is sent; Completed with Timer J = 64*T1 on UDP, 0 on
            // reliable transports (straight to Terminated).
            (ServerNonInvite::Trying | ServerNonInvite::Proceeding(_), _) => {
                self.disarm(cx, TxnTimer::Guard);
                if self.reliable() {
                    self.send(cx, Message::Response(resp));
                    (ServerNonInvite::Trying, Next::Terminate)
                } else {
                    // Encoded once: the driver sends these bytes, the state keeps them.
                    let mut wire = Vec::with_capacity(512);
                    resp.encode(&mut wire);
                    let bytes = Bytes::from(wire);
                    let status = resp.status;
                    cx.out.push_back(Output::Transmit {
                        to: self.remote,
                        msg: Message::Response(resp),
                        encoded: Some(bytes.clone()),
                    });
                    self.arm(cx, TxnTimer::J, cx.cfg.t1x64());
                    (ServerNonInvite::Completed { status, bytes }, Next::Stay)
                }
            }
            // §17.2.2: nothing more may be sent after the final response.
            (s @ ServerNonInvite::Completed { .. }, _) => {
                self.machine = Machine::ServerNonInvite(s);
                return Err(TxnError::WrongState);
            }
        };
        self.machine = Machine::ServerNonInvite(state);
        Ok(next)
    }

    pub(super) fn server_non_invite_timer(&mut self, cx: &mut Ctx<'_>, t: TxnTimer) -> Next {
        let Machine::ServerNonInvite(state) = &self.machine else {
            return Next::Stay;
        };
        match (t, state) {
            // §17.2.2: Timer J ends Completed.
            (TxnTimer::J, ServerNonInvite::Completed { .. }) => Next::Terminate,
            // Guard: the app never answered and the client has given up (its Timer F).
            (TxnTimer::Guard, ServerNonInvite::Trying | ServerNonInvite::Proceeding(_)) => {
                Txn::event(cx, Event::Timeout { key: self.key });
                Next::Terminate
            }
            _ => Next::Stay,
        }
    }
}
