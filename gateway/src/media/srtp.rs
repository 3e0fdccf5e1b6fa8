//! SRTP on one relay side (RFC 3711), keyed by SDES (RFC 4568): the peer's master key decrypts
//! and authenticates what it sends, the gateway's own key protects what goes to it. The suites
//! are the two RFC 4568 defines for SDES, AES_CM_128_HMAC_SHA1_80 and _32 (SRTCP always carries
//! the 80-bit tag, RFC 4568 §6.2). Sans-IO: packets in, packets out.
//!
//! rtc-srtp does not know MKIs. Microsoft's SBCs and Teams write one (`|2^31|1:1`): the MKI sits
//! between the encrypted part and the authentication tag and is not authenticated (RFC 3711
//! §3.1), so it is cut out before a packet is handed over. The gateway's own offers carry no MKI,
//! so nothing it sends needs one.

use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::providers::RingCrypto;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

/// Master key and salt length of the AES_CM_128 suites (16 + 14 bytes, RFC 3711 §8.2).
pub const MASTER_LEN: usize = 30;
/// Longest MKI accepted from a peer (RFC 4568 allows up to 128 bytes; phones use 1–4).
pub const MAX_MKI: usize = 16;
/// Replay window (RFC 3711 §3.3.2: at least 64).
const REPLAY_WINDOW: usize = 128;

/// An SDES crypto suite the gateway speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// `AES_CM_128_HMAC_SHA1_80`.
    AesCm128Sha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`.
    AesCm128Sha1_32,
}

impl Suite {
    /// Every suite, in the gateway's order of preference (the tag of an offered line is the
    /// index + 1).
    pub const ALL: [Suite; 2] = [Suite::AesCm128Sha1_80, Suite::AesCm128Sha1_32];

    /// The name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128Sha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128Sha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite called `name` (case-insensitive), if the gateway speaks it.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128Sha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128Sha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }

    /// Length of the SRTP authentication tag.
    fn rtp_tag(self) -> usize {
        match self {
            Suite::AesCm128Sha1_80 => 10,
            Suite::AesCm128Sha1_32 => 4,
        }
    }
}

/// What one relay side needs to speak SRTP with its leg.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    /// The negotiated suite.
    pub suite: Suite,
    /// The gateway's master key and salt (announced to the leg in the gateway's SDP).
    pub local: [u8; MASTER_LEN],
    /// The leg's master key and salt (from its `a=crypto`).
    pub remote: [u8; MASTER_LEN],
    /// Length of the MKI in the leg's packets (0: none).
    pub remote_mki: usize,
}

impl std::fmt::Debug for SrtpKeys {
    // Keys never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("suite", &self.suite)
            .field("remote_mki", &self.remote_mki)
            .finish_non_exhaustive()
    }
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    /// Too short for its tag and MKI, or not RTP/RTCP.
    #[error("packet too short or malformed")]
    Malformed,
    /// Authentication failed, a replay, or the cipher refused it.
    #[error("SRTP: {0}")]
    Crypto(String),
}

/// The SRTP state of one relay side.
pub struct SrtpSession {
    suite: Suite,
    mki: usize,
    /// Decrypts what the leg sends (its key).
    inbound: Context,
    /// Protects what the gateway sends to the leg (the gateway's key).
    outbound: Context,
}

impl SrtpSession {
    /// Contexts for `keys`.
    pub fn new(keys: &SrtpKeys) -> Result<SrtpSession, SrtpError> {
        let ctx = |master: &[u8; MASTER_LEN], replay: bool| {
            let (key, salt) = master.split_at(16);
            let (rtp, rtcp) = if replay {
                (
                    Some(srtp_replay_protection(REPLAY_WINDOW)),
                    Some(srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(key, salt, keys.suite.profile(), rtp, rtcp, &RingCrypto)
                .map_err(|e| SrtpError::Crypto(e.to_string()))
        };
        Ok(SrtpSession {
            suite: keys.suite,
            mki: keys.remote_mki,
            inbound: ctx(&keys.remote, true)?,
            outbound: ctx(&keys.local, false)?,
        })
    }

    /// Authenticates and decrypts a packet from the leg.
    pub fn unprotect(&mut self, packet: &[u8], rtcp: bool) -> Result<BytesMut, SrtpError> {
        let tag = if rtcp { 10 } else { self.suite.rtp_tag() };
        let stripped;
        let packet = if self.mki > 0 {
            let n = packet.len();
            if n < 8 + tag + self.mki {
                return Err(SrtpError::Malformed);
            }
            let cut = n - tag - self.mki;
            let mut v = Vec::with_capacity(n - self.mki);
            v.extend_from_slice(&packet[..cut]);
            v.extend_from_slice(&packet[n - tag..]);
            stripped = v;
            &stripped[..]
        } else {
            packet
        };
        let out = if rtcp {
            self.inbound.decrypt_rtcp(packet)
        } else {
            self.inbound.decrypt_rtp(packet)
        };
        out.map_err(|e| SrtpError::Crypto(e.to_string()))
    }

    /// Encrypts and authenticates a packet for the leg.
    pub fn protect(&mut self, packet: &[u8], rtcp: bool) -> Result<BytesMut, SrtpError> {
        let out = if rtcp {
            self.outbound.encrypt_rtcp(packet)
        } else {
            self.outbound.encrypt_rtp(packet)
        };
        out.map_err(|e| SrtpError::Crypto(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn keys(suite: Suite, local: u8, remote: u8) -> SrtpKeys {
        SrtpKeys {
            suite,
            local: [local; MASTER_LEN],
            remote: [remote; MASTER_LEN],
            remote_mki: 0,
        }
    }

    #[test]
    fn both_suites_round_trip_between_two_sides() {
        for suite in Suite::ALL {
            // The phone's side and the gateway's side hold each other's keys crosswise.
            let mut gw = SrtpSession::new(&keys(suite, 1, 2)).expect("gw");
            let mut phone = SrtpSession::new(&keys(suite, 2, 1)).expect("phone");
            let plain = rtp(7, b"0123456789abcdef");
            let wire = phone.protect(&plain, false).expect("protect");
            assert_eq!(wire.len(), plain.len() + suite.rtp_tag());
            assert_ne!(&wire[12..28], &plain[12..], "the payload is encrypted");
            assert_eq!(
                &gw.unprotect(&wire, false).expect("unprotect")[..],
                &plain[..]
            );
            // A replay of the same packet is refused.
            assert!(gw.unprotect(&wire, false).is_err());
            // So is a packet whose payload was changed on the way.
            let mut bad = phone
                .protect(&rtp(8, b"0123456789abcdef"), false)
                .expect("p");
            bad[14] ^= 1;
            assert!(gw.unprotect(&bad, false).is_err());
            // RTCP (a receiver report) both ways.
            let rr = [0x80, 201, 0, 1, 0xde, 0xad, 0xbe, 0xef];
            let wire = gw.protect(&rr, true).expect("srtcp");
            assert_eq!(wire.len(), rr.len() + 4 + 10, "E|index and an 80-bit tag");
            assert_eq!(&phone.unprotect(&wire, true).expect("rr")[..], &rr[..]);
        }
    }

    #[test]
    fn a_peer_mki_is_cut_out_before_authentication() {
        let suite = Suite::AesCm128Sha1_80;
        let mut gw = SrtpSession::new(&SrtpKeys {
            remote_mki: 1,
            ..keys(suite, 1, 2)
        })
        .expect("gw");
        let mut phone = SrtpSession::new(&keys(suite, 2, 1)).expect("phone");
        let plain = rtp(1, b"payload!");
        let wire = phone.protect(&plain, false).expect("protect");
        // What a Microsoft peer sends: MKI 1 (one byte) before the tag.
        let n = wire.len();
        let mut with_mki = wire[..n - 10].to_vec();
        with_mki.push(1);
        with_mki.extend_from_slice(&wire[n - 10..]);
        assert_eq!(
            &gw.unprotect(&with_mki, false).expect("mki")[..],
            &plain[..]
        );
        assert!(matches!(
            gw.unprotect(&with_mki[..12], false),
            Err(SrtpError::Malformed)
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut gw = SrtpSession::new(&keys(Suite::AesCm128Sha1_32, 1, 2)).expect("gw");
        for len in 0..40 {
            let p = vec![0x80; len];
            assert!(gw.unprotect(&p, false).is_err());
            assert!(gw.unprotect(&p, true).is_err());
        }
    }
}
