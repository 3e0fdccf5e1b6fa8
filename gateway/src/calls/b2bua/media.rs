//! SDP and SRTP per leg: SDES keys, the offers and answers the gateway writes, the relay's sides.

use std::net::SocketAddr;

use bytes::Bytes;
use csps_sip::sdp::{self, Sdp};

use super::{Call, MediaChange, Output, Sbc, Target};
use crate::calls::codecs;
use crate::calls::sdes::{LegSrtp, Sdes};

impl Call {
    /// The relay change for leg A (`a`) or the answered device.
    pub(super) fn media_for(&mut self, a: bool, addr: Option<SocketAddr>) {
        let change = if a {
            MediaChange::A(addr, self.setup.from.addr.ip())
        } else {
            let Some(w) = self.winner else { return };
            MediaChange::B(addr, self.forks[w].target.to.addr.ip())
        };
        self.out.push_back(Output::Media(change));
    }

    /// The SRTP rule of leg A (`a`) or of the answered device.
    pub(super) fn srtp_rule(&self, a: bool) -> LegSrtp {
        if a {
            self.setup
                .srtp
                .leg(self.setup.from.transport, self.setup.a_sbc.is_some())
        } else {
            self.winner
                .map_or(LegSrtp::Off, |w| self.target_rule(&self.forks[w].target))
        }
    }

    /// The SRTP rule of a device to ring.
    pub(super) fn target_rule(&self, t: &Target) -> LegSrtp {
        self.setup.srtp.leg(t.to.transport, t.sbc.is_some())
    }

    fn sdes_mut(&mut self, a: bool) -> &mut Sdes {
        if a {
            &mut self.sdes_a
        } else {
            &mut self.sdes_b
        }
    }

    /// A description from leg A (`a`) or B, an offer (`offer`) or an answer: the SDES line
    /// taken (or a 488) and, for an answer, the relay's keys for that side; `sdp` is left
    /// neutral for the other leg.
    pub(super) fn take_sdes(
        &mut self,
        a: bool,
        rule: LegSrtp,
        sdp: &mut Sdp,
        offer: bool,
    ) -> Result<(), sdp::OfferError> {
        let Some(m) = sdp.audio_index().and_then(|i| sdp.media.get_mut(i)) else {
            // No audio: restrict_offer or check_answer says so.
            return Ok(());
        };
        let sdes = self.sdes_mut(a);
        if offer {
            sdes.take_offer(rule, m)
        } else {
            sdes.take_answer(rule, m)
        }
    }

    /// The neutral `offer` as the gateway offers it to leg A (`a`) or B under `rule`.
    /// Prepares the offer of leg A (`from_a`) or the answered device for the other leg: only
    /// the codecs the gateway knows (G.711 alone from a phone under `Use8KHz`), then the
    /// transcodable ones it lacks added. Returns the audio section's index and the offer as it
    /// was before the additions, which its answer is made from ([`codecs::answer_back`]).
    pub(super) fn offer_onwards(
        &self,
        from_a: bool,
        offer: &mut Sdp,
    ) -> Result<(usize, Sdp), sdp::OfferError> {
        let idx = sdp::restrict_offer(offer, sdp::SUPPORTED)?;
        if self.setup.narrowband && self.is_phone(from_a) {
            codecs::narrowband(offer, idx)?;
        }
        let origin = offer.clone();
        codecs::augment(offer, idx);
        Ok((idx, origin))
    }

    /// The offer for a leg: under `Use8KHz` a phone leg is offered G.711 only (the gateway
    /// added it to every offer, so some is there).
    pub(super) fn offer_for(&self, phone: bool, offer: &Sdp) -> Sdp {
        let mut o = offer.clone();
        if self.setup.narrowband
            && phone
            && let Some(i) = o.audio_index()
            && codecs::narrowband(&mut o, i).is_err()
        {
            // No G.711 in it: the phone refuses what it cannot take, as without the setting.
            return offer.clone();
        }
        o
    }

    /// How the gateway names itself on leg A (`a`) or the answered device when that leg is
    /// the Teams trunk.
    pub(super) fn sbc_of(&self, a: bool) -> Option<&Sbc> {
        if a {
            self.setup.a_sbc.as_ref()
        } else {
            self.winner
                .and_then(|w| self.forks.get(w))
                .and_then(|f| f.target.sbc.as_ref())
        }
    }

    /// True when leg A (`a`) or the answered device is a phone (not the Teams trunk).
    pub(super) fn is_phone(&self, a: bool) -> bool {
        self.sbc_of(a).is_none()
    }

    pub(super) fn offer_body(&self, a: bool, rule: LegSrtp, offer: &Sdp) -> Bytes {
        let mut o = offer.clone();
        let sdes = if a { &self.sdes_a } else { &self.sdes_b };
        if let Some(m) = o.audio_index().and_then(|i| o.media.get_mut(i)) {
            sdes.give_offer(rule, m);
        }
        Bytes::from(o.to_bytes())
    }

    /// The neutral `answer` as the gateway answers leg A's (`a`) or B's last offer with it.
    pub(super) fn answer_body(&mut self, a: bool, answer: &Sdp) -> Bytes {
        let mut o = answer.clone();
        if let Some(m) = o.audio_index().and_then(|i| o.media.get_mut(i)) {
            self.sdes_mut(a).give_answer(m);
        }
        Bytes::from(o.to_bytes())
    }

    /// Tells the relay about SDES keys that changed since the last call.
    pub(super) fn flush_srtp(&mut self) {
        for a in [true, false] {
            let now = if a { &self.sdes_a } else { &self.sdes_b }.keys();
            let sent = if a {
                &mut self.srtp_sent.0
            } else {
                &mut self.srtp_sent.1
            };
            // Runs after every round of the call task, packets included: compare, clone only
            // on a change.
            if sent.as_ref() != now {
                let now = now.cloned();
                let fresh = sent.is_none() && now.is_some();
                sent.clone_from(&now);
                self.out.push_back(Output::Srtp { a, keys: now });
                let transport = if a {
                    Some(self.setup.from.transport)
                } else {
                    self.winner.map(|w| self.forks[w].target.to.transport)
                };
                if fresh && transport.is_some_and(|t| !t.is_secure()) {
                    tracing::warn!(
                        leg = if a { "A" } else { "B" },
                        "SRTP keys crossed unencrypted signalling (Data.SipConfig.SrtpOverPlainTransport)"
                    );
                }
            }
        }
    }

    /// Whether leg A (`a`) or B speaks SRTP now.
    pub fn srtp(&self, a: bool) -> bool {
        if a { &self.sdes_a } else { &self.sdes_b }.keys().is_some()
    }

    /// The relay's address facing leg A (`a`) or B.
    pub(super) fn relay_facing(&self, a: bool) -> SocketAddr {
        if a {
            self.setup.relay_a
        } else {
            self.setup.relay_b
        }
    }
}
