//! SDES (RFC 4568) for one relay side of a call: which `a=crypto` line of a leg's offer the
//! gateway takes, the lines it offers and answers with its own keys, and the keys the relay
//! then uses. Each leg negotiates with the gateway alone: what travels between the legs inside
//! the call is a neutral description (`RTP/AVP`, no crypto lines), so no key of one leg ever
//! reaches the other, and a leg with SRTP can talk to one without. Sans-IO.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use csps_sip::Transport;
use csps_sip::sdp::{Attribute, Media, OfferError};
use rand::RngCore;

use crate::config::SrtpMode;
use crate::media::srtp::{MASTER_LEN, MAX_MKI, SrtpKeys, Suite};

/// How SRTP is negotiated on one leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegSrtp {
    /// Plain RTP; an offer that insists on SRTP is refused.
    Off,
    /// SRTP offered (`RTP/AVP` with crypto lines, "best effort") and accepted; plain RTP too.
    Optional,
    /// SRTP only (`RTP/SAVP`).
    Mandatory,
    /// SRTP required, but the leg's signalling is not encrypted and keys may not cross it.
    Unkeyable,
}

/// `Data.SipConfig.Srtp` and whether keys may cross plain signalling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrtpPolicy {
    /// `Data.SipConfig.Srtp`.
    pub mode: SrtpMode,
    /// `Data.SipConfig.SrtpOverPlainTransport`.
    pub plain_keys: bool,
}

impl SrtpPolicy {
    /// The rule for a leg signalled over `transport`. The Teams trunk leg (`teams`) is always
    /// SRTP (`RTP/SAVP`), whatever `Data.SipConfig.Srtp` says for phones: Direct Routing
    /// requires it, and the trunk is TLS, so its keys are safe.
    pub fn leg(&self, transport: Transport, teams: bool) -> LegSrtp {
        let keys_safe = transport.is_secure() || self.plain_keys;
        match self.mode {
            _ if teams => LegSrtp::Mandatory,
            SrtpMode::Disabled => LegSrtp::Off,
            SrtpMode::Supported if keys_safe => LegSrtp::Optional,
            SrtpMode::Supported => LegSrtp::Off,
            SrtpMode::Required if keys_safe => LegSrtp::Mandatory,
            SrtpMode::Required => LegSrtp::Unkeyable,
        }
    }
}

/// The leg's key from the line the gateway took.
#[derive(Clone, Debug)]
struct Chosen {
    tag: u32,
    suite: Suite,
    remote: [u8; MASTER_LEN],
    mki: usize,
}

/// SDES state of one relay side.
pub struct Sdes {
    /// The gateway's master key per suite (index as in [`Suite::ALL`]), for the whole call: a
    /// device that replaces another on this side (a transfer) is told the same key.
    local: [[u8; MASTER_LEN]; 2],
    /// From the leg's last offer: the line taken (`None`: plain) and its transport.
    pending: Option<(Option<Chosen>, String)>,
    /// What the relay uses now (`None`: plain RTP).
    active: Option<SrtpKeys>,
}

impl std::fmt::Debug for Sdes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sdes")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

fn is_savp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/SAVP") || proto.eq_ignore_ascii_case("RTP/SAVPF")
}

fn is_rtp(proto: &str) -> bool {
    is_savp(proto)
        || proto.eq_ignore_ascii_case("RTP/AVP")
        || proto.eq_ignore_ascii_case("RTP/AVPF")
}

/// `RTP/SAVP(F)` → `RTP/AVP(F)`; other transports unchanged.
fn plain(proto: &str) -> String {
    if is_savp(proto) {
        proto.replacen("SAVP", "AVP", 1).replacen("savp", "avp", 1)
    } else {
        proto.to_owned()
    }
}

/// `RTP/AVP(F)` → `RTP/SAVP(F)`.
fn secure(proto: &str) -> String {
    if is_rtp(proto) && !is_savp(proto) {
        format!("RTP/S{}", &proto[4..])
    } else {
        proto.to_owned()
    }
}

fn decode_key(b64: &str) -> Option<[u8; MASTER_LEN]> {
    let v = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .ok()?;
    v.try_into().ok()
}

/// The first line of `m` the gateway can use, in the leg's order of preference (RFC 4568 §7.1.1).
fn pick(m: &Media) -> Option<Chosen> {
    m.crypto().into_iter().find_map(|c| {
        let suite = Suite::from_name(&c.suite)?;
        // Unencrypted or unauthenticated SRTP and key derivation rates are not spoken here.
        if c.params.iter().any(|p| {
            let p = p.to_ascii_uppercase();
            p.starts_with("UNENCRYPTED") || p.starts_with("UNAUTHENTICATED") || p.starts_with("KDR")
        }) {
            return None;
        }
        let mki = match c.mki {
            Some((_, len)) if usize::from(len) > MAX_MKI || len == 0 => return None,
            Some((_, len)) => usize::from(len),
            None => 0,
        };
        Some(Chosen {
            tag: c.tag,
            suite,
            remote: decode_key(&c.key)?,
            mki,
        })
    })
}

impl Sdes {
    /// A side with fresh keys from `rng` (the call's, seeded from the OS).
    pub fn new(rng: &mut dyn RngCore) -> Sdes {
        let mut local = [[0u8; MASTER_LEN]; 2];
        for k in &mut local {
            rng.fill_bytes(k);
        }
        Sdes {
            local,
            pending: None,
            active: None,
        }
    }

    /// The keys the relay uses now (`None`: plain RTP).
    pub fn keys(&self) -> Option<&SrtpKeys> {
        self.active.as_ref()
    }

    fn keys_for(&self, c: &Chosen) -> SrtpKeys {
        let i = Suite::ALL.iter().position(|s| *s == c.suite).unwrap_or(0);
        SrtpKeys {
            suite: c.suite,
            local: self.local[i],
            remote: c.remote,
            remote_mki: c.mki,
        }
    }

    fn line(&self, tag: u32, suite: Suite) -> Attribute {
        let i = Suite::ALL.iter().position(|s| *s == suite).unwrap_or(0);
        Attribute {
            name: "crypto".into(),
            value: Some(format!(
                "{tag} {} inline:{}",
                suite.name(),
                STANDARD.encode(self.local[i])
            )),
        }
    }

    /// An offer from the leg: takes its first usable crypto line (or refuses, 488) and leaves
    /// `m` neutral for the other leg.
    pub fn take_offer(&mut self, rule: LegSrtp, m: &mut Media) -> Result<(), OfferError> {
        let chosen = pick(m);
        let savp = is_savp(&m.proto);
        let chosen = match rule {
            LegSrtp::Off if savp => Err(OfferError::Srtp(
                "SRTP is not enabled here (Data.SipConfig.Srtp)",
            )),
            LegSrtp::Off => Ok(None),
            LegSrtp::Optional if savp && chosen.is_none() => Err(OfferError::Srtp(
                "no usable a=crypto (AES_CM_128_HMAC_SHA1_80 or _32)",
            )),
            LegSrtp::Optional => Ok(chosen),
            LegSrtp::Mandatory => chosen.map(Some).ok_or(OfferError::Srtp(
                "SRTP required: no usable a=crypto (AES_CM_128_HMAC_SHA1_80 or _32)",
            )),
            LegSrtp::Unkeyable => Err(OfferError::Srtp(
                "SRTP required, and its keys are only sent over TLS",
            )),
        }?;
        self.pending = Some((chosen, m.proto.clone()));
        m.remove_attr("crypto");
        m.proto = plain(&m.proto);
        Ok(())
    }

    /// The gateway's answer to the leg's last offer: its transport, and the gateway's key for
    /// the line taken; the relay's keys follow.
    pub fn give_answer(&mut self, m: &mut Media) {
        m.remove_attr("crypto");
        let Some((chosen, proto)) = &self.pending else {
            self.active = None;
            return;
        };
        m.proto = proto.clone();
        match chosen {
            Some(c) => {
                m.attributes.push(self.line(c.tag, c.suite));
                self.active = Some(self.keys_for(c));
            }
            None => self.active = None,
        }
    }

    /// The gateway's offer to the leg (`m` neutral): crypto lines for every suite when SRTP
    /// is allowed, `RTP/SAVP` when it is required.
    pub fn give_offer(&self, rule: LegSrtp, m: &mut Media) {
        m.remove_attr("crypto");
        let base = plain(&m.proto);
        m.proto = match rule {
            LegSrtp::Off | LegSrtp::Optional => base,
            LegSrtp::Mandatory | LegSrtp::Unkeyable => secure(&base),
        };
        if matches!(rule, LegSrtp::Optional | LegSrtp::Mandatory) && is_rtp(&m.proto) {
            for (i, s) in Suite::ALL.into_iter().enumerate() {
                m.attributes.push(self.line(i as u32 + 1, s));
            }
        }
    }

    /// The leg's answer to the gateway's offer: the line answering one the gateway offered
    /// sets the relay's keys; without one the leg stays plain (488 where SRTP is required).
    /// `m` is left neutral.
    pub fn take_answer(&mut self, rule: LegSrtp, m: &mut Media) -> Result<(), OfferError> {
        let got = matches!(rule, LegSrtp::Optional | LegSrtp::Mandatory)
            .then(|| pick(m))
            .flatten()
            .filter(|c| {
                usize::try_from(c.tag)
                    .ok()
                    .and_then(|t| t.checked_sub(1))
                    .and_then(|i| Suite::ALL.get(i))
                    == Some(&c.suite)
            });
        m.remove_attr("crypto");
        m.proto = plain(&m.proto);
        match (rule, got) {
            (LegSrtp::Mandatory | LegSrtp::Unkeyable, None) => Err(OfferError::Srtp(
                "SRTP required: the answer carries no usable a=crypto",
            )),
            (_, Some(c)) => {
                self.active = Some(self.keys_for(&c));
                Ok(())
            }
            (_, None) => {
                self.active = None;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csps_sip::sdp::Sdp;
    use rand::SeedableRng;

    fn media(proto: &str, crypto: &[&str]) -> Media {
        let mut s = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        for c in crypto {
            s.push_str(&format!("a=crypto:{c}\r\n"));
        }
        Sdp::parse(s.as_bytes()).expect("sdp").media.remove(0)
    }

    fn sdes() -> Sdes {
        Sdes::new(&mut rand::rngs::StdRng::seed_from_u64(7))
    }

    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    /// What Microsoft sends: lifetime and a one-byte MKI.
    const MS: &str =
        "2 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31|1:1";

    #[test]
    fn policy_per_leg() {
        let p = |mode, plain_keys| SrtpPolicy { mode, plain_keys };
        use SrtpMode::*;
        assert_eq!(p(Disabled, true).leg(Transport::Tls, false), LegSrtp::Off);
        assert_eq!(
            p(Supported, false).leg(Transport::Tls, false),
            LegSrtp::Optional
        );
        assert_eq!(p(Supported, false).leg(Transport::Udp, false), LegSrtp::Off);
        assert_eq!(
            p(Supported, true).leg(Transport::Udp, false),
            LegSrtp::Optional
        );
        assert_eq!(
            p(Required, false).leg(Transport::Tcp, false),
            LegSrtp::Unkeyable
        );
        assert_eq!(
            p(Required, false).leg(Transport::Tls, false),
            LegSrtp::Mandatory
        );
    }

    #[test]
    fn the_teams_leg_is_always_srtp_and_refuses_an_answer_without_crypto() {
        use SrtpMode::*;
        for mode in [Disabled, Supported, Required] {
            for plain_keys in [false, true] {
                let p = SrtpPolicy { mode, plain_keys };
                assert_eq!(p.leg(Transport::Tls, true), LegSrtp::Mandatory, "{p:?}");
            }
        }
        let rule = SrtpPolicy::default().leg(Transport::Tls, true);
        // The gateway's offer to Teams: RTP/SAVP with its keys.
        let mut s = sdes();
        let mut m = media("RTP/AVP", &[]);
        s.give_offer(rule, &mut m);
        assert_eq!((m.proto.as_str(), m.crypto().len()), ("RTP/SAVP", 2));
        // Teams answers RTP/SAVP but without a crypto line (or plain): refused, no keys.
        for proto in ["RTP/SAVP", "RTP/AVP"] {
            let e = s
                .take_answer(rule, &mut media(proto, &[]))
                .expect_err("no crypto");
            assert_eq!(e.status(), 488, "{proto}");
            assert!(s.keys().is_none());
        }
        // Microsoft's answer to line 1 (lifetime and MKI) keys the leg.
        let mut a = media("RTP/SAVP", &[&MS.replacen('2', "1", 1)]);
        s.take_answer(rule, &mut a).expect("answer");
        let k = s.keys().expect("keys");
        assert_eq!((k.suite, k.remote_mki), (Suite::AesCm128Sha1_80, 1));
        // A plain offer from Teams is refused; its RTP/SAVP offer is taken.
        assert!(sdes().take_offer(rule, &mut media("RTP/AVP", &[])).is_err());
        sdes()
            .take_offer(rule, &mut media("RTP/SAVP", &[MS]))
            .expect("Teams' offer");
    }

    #[test]
    fn microsoft_line_with_lifetime_and_mki_is_taken_and_answered() {
        let mut s = sdes();
        let mut m = media("RTP/SAVP", &[MS]);
        s.take_offer(LegSrtp::Mandatory, &mut m).expect("taken");
        assert_eq!(m.proto, "RTP/AVP", "neutral towards the other leg");
        assert!(m.crypto().is_empty(), "no key crosses to the other leg");
        let mut answer = media("RTP/AVP", &[]);
        s.give_answer(&mut answer);
        assert_eq!(answer.proto, "RTP/SAVP");
        let line = answer.crypto().remove(0);
        assert_eq!(
            (line.tag, line.suite.as_str()),
            (2, "AES_CM_128_HMAC_SHA1_80")
        );
        assert_eq!(decode_key(&line.key), Some(s.local[0]));
        let keys = s.keys().expect("active");
        assert_eq!(keys.remote_mki, 1);
        assert_eq!(Some(keys.remote), decode_key(KEY));
    }

    #[test]
    fn best_effort_offer_prefers_the_first_usable_line() {
        let mut s = sdes();
        let mut m = media(
            "RTP/AVP",
            &[
                "1 AES_256_CM_HMAC_SHA1_80 inline:AAAA",
                "2 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz UNENCRYPTED_SRTP",
                &format!("3 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"),
            ],
        );
        s.take_offer(LegSrtp::Optional, &mut m).expect("taken");
        let mut a = media("RTP/AVP", &[]);
        s.give_answer(&mut a);
        assert_eq!(a.proto, "RTP/AVP", "the offer's transport");
        let line = a.crypto().remove(0);
        assert_eq!(line.tag, 3);
        assert_eq!(s.keys().map(|k| k.suite), Some(Suite::AesCm128Sha1_32));
        // With SRTP off the same offer is answered plain.
        let mut s = sdes();
        s.take_offer(LegSrtp::Off, &mut media("RTP/AVP", &[MS]))
            .expect("plain");
        let mut a = media("RTP/AVP", &[]);
        s.give_answer(&mut a);
        assert!(a.crypto().is_empty() && s.keys().is_none());
    }

    #[test]
    fn refusals_are_488s() {
        let cases: [(LegSrtp, &str, &[&str]); 5] = [
            (LegSrtp::Off, "RTP/SAVP", &[MS]),
            (
                LegSrtp::Optional,
                "RTP/SAVP",
                &["1 F8_128_HMAC_SHA1_80 inline:AAAA"],
            ),
            (LegSrtp::Mandatory, "RTP/AVP", &[]),
            (
                LegSrtp::Mandatory,
                "RTP/SAVP",
                &["1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ="],
            ),
            (LegSrtp::Unkeyable, "RTP/SAVP", &[MS]),
        ];
        for (rule, proto, lines) in cases {
            let e = sdes()
                .take_offer(rule, &mut media(proto, lines))
                .expect_err("refused");
            assert_eq!(e.status(), 488, "{rule:?} {proto} {lines:?}");
        }
    }

    #[test]
    fn offer_and_answer_towards_a_leg() {
        let mut s = sdes();
        let mut m = media("RTP/AVP", &[]);
        s.give_offer(LegSrtp::Mandatory, &mut m);
        assert_eq!(m.proto, "RTP/SAVP");
        let lines = m.crypto();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].suite, "AES_CM_128_HMAC_SHA1_32");
        // The device picks tag 2.
        let mut a = media(
            "RTP/SAVP",
            &[&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}")],
        );
        s.take_answer(LegSrtp::Mandatory, &mut a).expect("answer");
        assert_eq!(a.proto, "RTP/AVP");
        assert!(a.crypto().is_empty());
        let k = s.keys().expect("keys");
        assert_eq!((k.suite, k.local), (Suite::AesCm128Sha1_32, s.local[1]));
        // A tag answered with another suite than offered is not taken.
        let mut bad = media(
            "RTP/SAVP",
            &[&format!("1 AES_CM_128_HMAC_SHA1_32 inline:{KEY}")],
        );
        assert!(s.take_answer(LegSrtp::Mandatory, &mut bad).is_err());
        // Optional: a plain answer leaves the leg plain.
        let mut m = media("RTP/AVP", &[]);
        s.give_offer(LegSrtp::Optional, &mut m);
        assert_eq!((m.proto.as_str(), m.crypto().len()), ("RTP/AVP", 2));
        s.take_answer(LegSrtp::Optional, &mut media("RTP/AVP", &[]))
            .expect("plain answer");
        assert!(s.keys().is_none());
        // Off: no lines at all.
        let mut m = media("RTP/AVP", &[]);
        s.give_offer(LegSrtp::Off, &mut m);
        assert!(m.crypto().is_empty());
    }
}
