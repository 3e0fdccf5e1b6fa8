//! Stateless digest nonces: `base64url(issued ‖ random ‖ HMAC-SHA256(secret, issued ‖ random)[..16])`
//! with `issued` in seconds since the Unix epoch, so any nonce this server (or a peer sharing the
//! secret) minted can be checked without state. The only state is the last `nc` seen per nonce,
//! kept in a table bounded by nonce age and by a hard cap.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Length of a minted nonce in characters (32 bytes in unpadded base64url).
pub const NONCE_LEN: usize = 43;

/// Nonces issued this far in the future (clock stepped back) are refused as foreign.
const FUTURE_SKEW_SECS: u64 = 60;

/// The identity of a nonce in the nc table: its issue time and random part.
pub(crate) type NonceId = [u8; 16];

/// What a received nonce turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Not minted with our secret, or malformed.
    Invalid,
    /// Ours but older than the lifetime (or forgotten under memory pressure).
    Stale,
    /// Ours and fresh.
    Fresh { id: NonceId, issued: u64 },
}

/// Mints and checks nonces; tracks the highest `nc` accepted per nonce.
pub(crate) struct Nonces {
    mac: Hmac<Sha256>,
    last_nc: HashMap<NonceId, u32>,
    /// Nonces in the order they were first used, with their issue time, for age eviction.
    order: VecDeque<(u64, NonceId)>,
    /// Nonces issued at or before this time may have been evicted early: treat them as stale.
    floor: u64,
    cap: usize,
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Nonces {
    pub(crate) fn new(secret: [u8; 32], cap: usize) -> Self {
        Nonces {
            mac: Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length"),
            last_nc: HashMap::new(),
            order: VecDeque::new(),
            floor: 0,
            cap: cap.max(1),
        }
    }

    fn tag(&self, id: &NonceId) -> [u8; 16] {
        let mut m = self.mac.clone();
        m.update(id);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A new nonce issued at `now`.
    pub(crate) fn mint(&self, now: SystemTime, rng: &mut impl RngCore) -> String {
        let mut raw = [0u8; 32];
        raw[..8].copy_from_slice(&unix_secs(now).to_be_bytes());
        rng.fill_bytes(&mut raw[8..16]);
        let id: NonceId = raw[..16].try_into().expect("16-byte slice");
        raw[16..].copy_from_slice(&self.tag(&id));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a received nonce's MAC and age (one HMAC, no allocation).
    pub(crate) fn check(&self, nonce: &str, now: SystemTime, lifetime: Duration) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; 33];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(32) => {}
            _ => return NonceCheck::Invalid,
        }
        let id: NonceId = raw[..16].try_into().expect("16-byte slice");
        let tag = self.tag(&id);
        let diff = tag
            .iter()
            .zip(&raw[16..32])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return NonceCheck::Invalid;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8-byte slice"));
        let now = unix_secs(now);
        if issued > now + FUTURE_SKEW_SECS {
            return NonceCheck::Invalid;
        }
        if now.saturating_sub(issued) > lifetime.as_secs() || issued <= self.floor {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh { id, issued }
    }

    /// True when `nc` is greater than the last one accepted for this nonce.
    pub(crate) fn nc_fresh(&self, id: &NonceId, nc: u32) -> bool {
        self.last_nc.get(id).is_none_or(|&last| nc > last)
    }

    /// Records an accepted `nc`, evicting nonces past their lifetime (and the oldest ones when full).
    pub(crate) fn accept(
        &mut self,
        id: NonceId,
        issued: u64,
        nc: u32,
        now: SystemTime,
        lifetime: Duration,
    ) {
        self.purge(now, lifetime);
        match self.last_nc.get_mut(&id) {
            Some(last) => *last = (*last).max(nc),
            None => {
                while self.last_nc.len() >= self.cap {
                    let Some((t, old)) = self.order.pop_front() else {
                        break;
                    };
                    self.last_nc.remove(&old);
                    self.floor = self.floor.max(t);
                }
                self.last_nc.insert(id, nc);
                self.order.push_back((issued, id));
            }
        }
    }

    /// Drops tracked nonces older than the lifetime (they are refused as stale anyway).
    pub(crate) fn purge(&mut self, now: SystemTime, lifetime: Duration) {
        let limit = unix_secs(now).saturating_sub(lifetime.as_secs());
        while let Some(&(t, id)) = self.order.front() {
            if t >= limit {
                break;
            }
            self.order.pop_front();
            self.last_nc.remove(&id);
        }
    }

    /// How many nonces are tracked.
    pub(crate) fn tracked(&self) -> usize {
        self.last_nc.len()
    }
}
