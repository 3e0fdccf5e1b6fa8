//! INFO relayed between the legs, and DTMF interworked between SIP INFO and RFC 4733 events.

use bytes::Bytes;
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Request};

use super::{Call, MediaChange, Output, Phase, TelephoneEvent};
use crate::media::dtmf::{self, Digit};

impl Call {
    /// Records the telephone-event each leg negotiated and tells the relay.
    pub(super) fn set_telephone_events(&mut self, a: TelephoneEvent, b: TelephoneEvent) {
        self.telephone_events = (a, b);
        self.out.push_back(Output::Media(MediaChange::Dtmf(a, b)));
    }

    /// An INFO from leg A (`from_a`) or B. DTMF from a leg without telephone-event to a leg
    /// with it is interworked: answered here (200, or 400 for a body naming no digit) and
    /// played to the other leg as RFC 4733 events. Anything else is relayed.
    pub(super) fn on_info(&mut self, key: TxnKey, from_a: bool, req: Request) {
        let (own, other) = if from_a {
            self.telephone_events
        } else {
            (self.telephone_events.1, self.telephone_events.0)
        };
        let ct = req.headers.get("Content-Type").unwrap_or("");
        if own.is_some() || other.is_none() || !dtmf::is_dtmf_type(ct) {
            return self.relay_info(key, from_a, req);
        }
        let resp = match dtmf::parse_info(ct, &req.body) {
            Ok(digit) => {
                self.out.push_back(Output::Dtmf {
                    to_a: !from_a,
                    digit,
                });
                req.response(200, "OK")
            }
            Err(e) => self.refusal(&req, e.status(), Some(&e.to_string())),
        };
        self.out.push_back(Output::Respond { key, resp });
    }

    /// A digit read from leg A's (`from_a`) or B's RFC 4733 events, sent to the other leg as
    /// an INFO `application/dtmf-relay` when that leg has no telephone-event.
    pub(super) fn digit_as_info(&mut self, from_a: bool, digit: Digit) {
        let other = if from_a {
            self.telephone_events.1
        } else {
            self.telephone_events.0
        };
        if other.is_some() || !matches!(self.phase, Phase::Answered | Phase::Confirmed) {
            return;
        }
        let body = Bytes::from(dtmf::relay_body(digit));
        if let Some((tag, _)) = self.send_in_dialog(
            !from_a,
            Method::Info,
            Some("application/dtmf-relay"),
            body,
            None,
            &[],
        ) {
            self.dtmf_infos.push(tag);
        }
    }

    /// An INFO (DTMF by `application/dtmf-relay` or `application/dtmf`, or anything else a phone
    /// sends) passed to the other leg as is; its answer comes back to the sender.
    fn relay_info(&mut self, key: TxnKey, from_a: bool, req: Request) {
        let ct = req.headers.get("Content-Type").map(str::to_owned);
        match self.send_in_dialog(
            !from_a,
            Method::Info,
            ct.as_deref(),
            req.body.clone(),
            None,
            &[],
        ) {
            Some((tag, _)) => self.infos.push((tag, key, req)),
            None => {
                let r = req.response(481, "Call/Transaction Does Not Exist");
                self.out.push_back(Output::Respond { key, resp: r });
            }
        }
    }
}
