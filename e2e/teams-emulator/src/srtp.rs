//! SDES-SRTP (RFC 4568, RFC 3711) as Direct Routing speaks it: the one suite Teams offers,
//! AES_CM_128_HMAC_SHA1_80, and the emulator's lines in Microsoft's form
//! (`a=crypto:N AES_CM_128_HMAC_SHA1_80 inline:<key>|2^31|1:1`). Because its lines name MKI 1
//! of one byte, every packet the emulator protects carries that byte between the encrypted part
//! and the authentication tag (it is not authenticated, RFC 3711 §3.1), as Teams' packets do;
//! a peer's MKI, when its line names one, is cut out before authentication.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::rand::SecureRandom;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::providers::RingCrypto;
use rtc_srtp::option::srtp_replay_protection;
use rtc_srtp::protection_profile::ProtectionProfile;

/// The suite the emulator offers and accepts.
pub const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
/// Master key (16) and salt (14).
const MASTER_LEN: usize = 30;
/// The suite's authentication tag.
const TAG_LEN: usize = 10;
/// The MKI the emulator's lines announce (`|1:1`).
const MKI: u8 = 1;

/// The emulator's master key and salt for one call.
#[derive(Clone)]
pub struct LocalKey([u8; MASTER_LEN]);

impl LocalKey {
    /// A fresh key from the system's random source.
    pub fn fresh() -> Option<LocalKey> {
        let mut k = [0u8; MASTER_LEN];
        ring::rand::SystemRandom::new().fill(&mut k).ok()?;
        Some(LocalKey(k))
    }

    /// The `a=crypto` line (with CRLF) announcing this key under `tag`, as Microsoft writes it.
    pub fn line(&self, tag: u32) -> String {
        format!(
            "a=crypto:{tag} {SUITE} inline:{}|2^31|1:{MKI}\r\n",
            STANDARD.encode(self.0)
        )
    }
}

/// The peer's key from its `a=crypto` line.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteKey {
    /// The line's tag (an answer repeats the offer's).
    pub tag: u32,
    key: [u8; MASTER_LEN],
    /// Length of the MKI in the peer's packets (0: none).
    mki: usize,
}

/// The first line of `sdp` with the emulator's suite, no session parameters and a key that
/// decodes. Lifetime and MKI follow the key, `|`-separated; the MKI is the one with a `:`.
pub fn remote_key(sdp: &str) -> Option<RemoteKey> {
    sdp.lines().map(str::trim).find_map(|l| {
        let mut parts = l.strip_prefix("a=crypto:")?.split_whitespace();
        let tag = parts.next()?.parse().ok()?;
        if !parts.next()?.eq_ignore_ascii_case(SUITE) {
            return None;
        }
        let mut key_params = parts.next()?.strip_prefix("inline:")?.split('|');
        if parts.next().is_some() {
            // UNENCRYPTED_SRTP and the like: not what Teams sends.
            return None;
        }
        let b64 = key_params.next()?;
        let key = STANDARD
            .decode(b64)
            .or_else(|_| STANDARD_NO_PAD.decode(b64))
            .ok()?
            .try_into()
            .ok()?;
        let mki = match key_params.find_map(|p| p.split_once(':')) {
            Some((_, len)) => len.parse().ok().filter(|n| (1..=16).contains(n))?,
            None => 0,
        };
        Some(RemoteKey { tag, key, mki })
    })
}

/// SRTP for one call's media: the peer's key decrypts what it sends, the emulator's protects
/// what goes to it.
pub struct Srtp {
    inbound: Context,
    outbound: Context,
    remote_mki: usize,
}

impl Srtp {
    /// Contexts for the two keys.
    pub fn new(local: &LocalKey, remote: &RemoteKey) -> Option<Srtp> {
        let ctx = |master: &[u8; MASTER_LEN], replay: bool| {
            let (key, salt) = master.split_at(16);
            let replay = replay.then(|| srtp_replay_protection(128));
            Context::new(
                key,
                salt,
                ProtectionProfile::Aes128CmHmacSha1_80,
                replay,
                None,
                &RingCrypto,
            )
            .ok()
        };
        Some(Srtp {
            inbound: ctx(&remote.key, true)?,
            outbound: ctx(&local.0, false)?,
            remote_mki: remote.mki,
        })
    }

    /// An RTP packet for the peer: encrypted, with the MKI before its tag.
    pub fn protect(&mut self, rtp: &[u8]) -> Option<Vec<u8>> {
        let sealed = self.outbound.encrypt_rtp(rtp).ok()?;
        let (body, tag) = sealed.split_at(sealed.len().checked_sub(TAG_LEN)?);
        Some([body, &[MKI], tag].concat())
    }

    /// The RTP packet inside one from the peer; `None` when it does not authenticate (or is a
    /// replay).
    pub fn unprotect(&mut self, srtp: &[u8]) -> Option<Vec<u8>> {
        let cut = srtp.len().checked_sub(TAG_LEN + self.remote_mki)?;
        let (body, rest) = srtp.split_at(cut);
        let packet = [body, &rest[self.remote_mki..]].concat();
        self.inbound.decrypt_rtp(&packet).ok().map(|p| p.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0xab, 0xcd, 0, 1];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0x55; 160]);
        p
    }

    #[test]
    fn two_ends_with_each_others_lines_talk_and_a_forgery_fails() {
        let (a, b) = (LocalKey::fresh().expect("a"), LocalKey::fresh().expect("b"));
        let sdp = |k: &LocalKey| format!("m=audio 1 RTP/SAVP 0\r\n{}", k.line(1));
        let line = a.line(1);
        assert!(line.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(line.ends_with("|2^31|1:1\r\n"), "{line}");
        let mut at_a = Srtp::new(&a, &remote_key(&sdp(&b)).expect("b's line")).expect("a");
        let mut at_b = Srtp::new(&b, &remote_key(&sdp(&a)).expect("a's line")).expect("b");
        let wire = at_a.protect(&rtp(1)).expect("protect");
        assert_eq!(wire.len(), rtp(1).len() + 1 + TAG_LEN, "MKI and tag");
        assert_eq!(wire[wire.len() - TAG_LEN - 1], MKI);
        assert_eq!(at_b.unprotect(&wire), Some(rtp(1)));
        assert_eq!(at_b.unprotect(&wire), None, "a replay");
        let mut forged = at_a.protect(&rtp(2)).expect("protect");
        forged[20] ^= 1;
        assert_eq!(at_b.unprotect(&forged), None);
        assert_eq!(at_b.unprotect(&[0x80; 5]), None, "too short");
    }

    #[test]
    fn lines_without_the_suite_or_with_session_parameters_are_not_taken() {
        let key = STANDARD.encode([7u8; MASTER_LEN]);
        let sdp = format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP\r\n\
             a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
        );
        let r = remote_key(&sdp).expect("line 3");
        assert_eq!((r.tag, r.mki), (3, 0));
        assert!(remote_key("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=").is_none());
    }
}
