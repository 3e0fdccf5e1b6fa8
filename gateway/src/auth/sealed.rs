//! Secrets sealed with `secret_key` (the local file's or `CSPS_SECRET_KEY`, never the store's):
//! AES-256-GCM under a key derived (HKDF-SHA256) per purpose. Refresh tokens at rest take the
//! account id as associated data, so a sealed token copied onto another account, or altered,
//! does not open; a sign-in's `state` ([`super::activation`]) is sealed under its own key. The
//! text form is `v1.` + base64url(12-byte random nonce ‖ ciphertext ‖ tag). Servers of a
//! cluster must share `secret_key` to open each other's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

/// The prefix of the current format.
const VERSION: &str = "v1.";
/// HKDF `info`: what the derived key is for (a key per purpose).
const INFO: &[u8] = b"csps refresh token v1";
/// HKDF `info` of the key that seals sign-in states.
const SIGN_IN_INFO: &[u8] = b"csps sign-in state v1";

/// Why a sealed token did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Not a sealed token of this format, altered, of another account, or sealed under
    /// another `secret_key`.
    #[error("the sealed token does not open with this server's secret_key")]
    Open,
    /// The system's random number generator failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// The key tokens are sealed with.
pub struct TokenKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl TokenKey {
    /// The refresh tokens' key derived from `secret_key` (32 bytes).
    pub fn new(secret_key: &[u8; 32]) -> Self {
        Self::derived(secret_key, INFO)
    }

    /// The sign-in states' key derived from `secret_key`.
    pub fn for_sign_ins(secret_key: &[u8; 32]) -> Self {
        Self::derived(secret_key, SIGN_IN_INFO)
    }

    fn derived(secret_key: &[u8; 32], info: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"csps").extract(secret_key);
        let mut bytes = [0u8; 32];
        prk.expand(&[info], &AES_256_GCM)
            .and_then(|okm| okm.fill(&mut bytes))
            .expect("32 bytes is AES-256-GCM's key length, within HKDF-SHA256's output");
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .expect("the key has AES-256-GCM's length by construction");
        TokenKey {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        }
    }

    /// `token` sealed for the account `account`.
    pub fn seal(&self, account: Uuid, token: &str) -> Result<String, SealError> {
        self.seal_with(account.as_bytes(), token)
    }

    /// The token `sealed` holds, when it was sealed for `account` under this key.
    pub fn open(&self, account: Uuid, sealed: &str) -> Result<String, SealError> {
        self.open_with(account.as_bytes(), sealed)
    }

    /// `text` sealed with `aad` as associated data.
    pub fn seal_with(&self, aad: &[u8], text: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = text.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{VERSION}{}", B64.encode(out)))
    }

    /// The text `sealed` holds, when it was sealed with `aad` under this key.
    pub fn open_with(&self, aad: &[u8], sealed: &str) -> Result<String, SealError> {
        let raw = sealed
            .strip_prefix(VERSION)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut data)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_per_account_and_key() {
        let k = TokenKey::new(&[7; 32]);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let s = k.seal(a, "0.AQ-refresh-token").expect("seal");
        assert!(s.starts_with("v1.") && !s.contains("refresh"), "{s}");
        assert_ne!(
            s,
            k.seal(a, "0.AQ-refresh-token").expect("seal"),
            "fresh nonce"
        );
        assert_eq!(k.open(a, &s).expect("open"), "0.AQ-refresh-token");
        assert!(k.open(b, &s).is_err(), "another account's");
        assert!(TokenKey::new(&[8; 32]).open(a, &s).is_err(), "another key");
        let mut altered = s.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ascii");
        assert!(k.open(a, &altered).is_err());
        for junk in ["", "v1.", "v1.AAAA", "v2.x", "plain"] {
            assert!(k.open(a, junk).is_err(), "{junk}");
        }
    }
}
