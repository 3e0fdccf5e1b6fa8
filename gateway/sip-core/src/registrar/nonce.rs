//! Digest nonces: `base64url(issued ‖ instance ‖ seq ‖ HMAC-SHA256(secret, issued ‖ instance ‖ seq)[..16])`
//! with `issued` in seconds since the Unix epoch (u32), `instance` a random number drawn once per
//! registrar (so a restarted server, or a peer sharing the secret, tells its own nonces from
//! others') and `seq` a counter of minted nonces. The MAC and age are checked without state; the
//! only state is a fixed ring of `nc` slots indexed by `seq` (as Kamailio's `nc_array`): minting
//! resets the slot, an accepted `nc` raises it, and a nonce whose slot has been reused, or that
//! another instance minted, is stale. Memory is fixed at construction (4 B per slot) whatever the
//! number of accounts; a ring too small for the challenge rate only makes old nonces stale early.

use std::collections::VecDeque;
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

/// Most per-second marks kept for age retirement (a clock stepped far back cannot grow it).
const MAX_MARKS: usize = 4096;

/// What a received nonce turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    /// Not minted with our secret, or malformed.
    Invalid,
    /// Ours (or a peer's sharing the secret) but older than the lifetime, minted by another
    /// instance, or its `nc` slot already reused.
    Stale,
    /// Minted here, fresh, its `nc` slot still held: `seq` names the slot.
    Fresh { seq: u64 },
}

/// Mints and checks nonces; tracks the highest `nc` accepted per outstanding nonce.
pub(crate) struct Nonces {
    mac: Hmac<Sha256>,
    /// This registrar's instance id, drawn from the injected RNG at the first mint (0: not yet).
    instance: u32,
    /// Highest `nc` accepted for the nonce `seq` at index `seq % len` (0: none yet).
    slots: Box<[u32]>,
    /// The next sequence number to mint.
    next: u64,
    /// Lowest sequence number still outstanding: `floor..next` hold slots, at most `slots.len()`.
    floor: u64,
    /// `(second, first seq minted in it)`, increasing, to retire nonces past their lifetime.
    marks: VecDeque<(u64, u64)>,
    /// Outstanding nonces whose slot holds an accepted `nc`.
    used: usize,
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Nonces {
    /// Nonces with `capacity` outstanding `nc` slots.
    pub(crate) fn new(secret: [u8; 32], capacity: usize) -> Self {
        Nonces {
            mac: Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length"),
            instance: 0,
            // Zeroed pages come from the OS untouched: only slots actually used cost memory.
            slots: vec![0u32; capacity.max(1)].into_boxed_slice(),
            next: 0,
            floor: 0,
            marks: VecDeque::new(),
            used: 0,
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; 16] {
        let mut m = self.mac.clone();
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn slot(&self, seq: u64) -> usize {
        // The remainder is below `slots.len()`, a usize.
        usize::try_from(seq % self.slots.len() as u64).unwrap_or(0)
    }

    /// Gives up the oldest outstanding slot.
    fn retire_one(&mut self) {
        let i = self.slot(self.floor);
        if self.slots[i] != 0 {
            self.used -= 1;
            self.slots[i] = 0;
        }
        self.floor += 1;
    }

    /// A new nonce issued at `now`, taking the next `nc` slot (the oldest one when all are held).
    pub(crate) fn mint(&mut self, now: SystemTime, rng: &mut impl RngCore) -> String {
        while self.instance == 0 {
            self.instance = rng.next_u32();
        }
        if self.next - self.floor >= self.slots.len() as u64 {
            self.retire_one();
        }
        let seq = self.next;
        self.next += 1;
        let i = self.slot(seq);
        self.slots[i] = 0;
        let secs = unix_secs(now);
        if self.marks.back().is_none_or(|&(t, _)| secs > t) && self.marks.len() < MAX_MARKS {
            self.marks.push_back((secs, seq));
        }
        let mut raw = [0u8; 32];
        raw[..4].copy_from_slice(&u32::try_from(secs).unwrap_or(u32::MAX).to_be_bytes());
        raw[4..8].copy_from_slice(&self.instance.to_be_bytes());
        raw[8..16].copy_from_slice(&seq.to_be_bytes());
        let tag = self.tag(&raw[..16]);
        raw[16..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a received nonce's MAC, age and slot (one HMAC, no allocation).
    pub(crate) fn check(&self, nonce: &str, now: SystemTime, lifetime: Duration) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let mut raw = [0u8; 33];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(32) => {}
            _ => return NonceCheck::Invalid,
        }
        let tag = self.tag(&raw[..16]);
        let diff = tag
            .iter()
            .zip(&raw[16..32])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return NonceCheck::Invalid;
        }
        let field =
            |r: std::ops::Range<usize>| raw[r].iter().fold(0u64, |a, &b| a << 8 | u64::from(b));
        let (issued, instance, seq) = (field(0..4), field(4..8), field(8..16));
        let now = unix_secs(now);
        if issued > now + FUTURE_SKEW_SECS {
            return NonceCheck::Invalid;
        }
        if now.saturating_sub(issued) > lifetime.as_secs()
            || instance != u64::from(self.instance)
            || seq < self.floor
            || seq >= self.next
        {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh { seq }
    }

    /// True when `nc` is greater than the last one accepted for the nonce `seq`.
    pub(crate) fn nc_fresh(&self, seq: u64, nc: u32) -> bool {
        nc > self.slots[self.slot(seq)]
    }

    /// Records an accepted `nc` for the nonce `seq` (from a [`NonceCheck::Fresh`] of this call).
    pub(crate) fn accept(&mut self, seq: u64, nc: u32) {
        if seq < self.floor || seq >= self.next {
            return;
        }
        let i = self.slot(seq);
        if self.slots[i] == 0 && nc != 0 {
            self.used += 1;
        }
        self.slots[i] = self.slots[i].max(nc);
    }

    /// Retires nonces older than the lifetime (they are refused as stale anyway); amortised
    /// O(1) per minted nonce.
    pub(crate) fn purge(&mut self, now: SystemTime, lifetime: Duration) {
        let limit = unix_secs(now).saturating_sub(lifetime.as_secs());
        while let Some(&(t, _)) = self.marks.front() {
            if t >= limit {
                break;
            }
            self.marks.pop_front();
            let until = self.marks.front().map_or(self.next, |&(_, s)| s);
            while self.floor < until {
                self.retire_one();
            }
        }
    }

    /// How many outstanding nonces have an accepted `nc`.
    pub(crate) fn tracked(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const LIFE: Duration = Duration::from_secs(300);

    #[test]
    fn ring_reuses_slots_and_makes_the_overwritten_nonce_stale() {
        let mut n = Nonces::new([9; 32], 2);
        let mut rng = StdRng::seed_from_u64(1);
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let a = n.mint(t, &mut rng);
        let NonceCheck::Fresh { seq: sa } = n.check(&a, t, LIFE) else {
            panic!("fresh");
        };
        assert!(n.nc_fresh(sa, 1));
        n.accept(sa, 1);
        assert!(!n.nc_fresh(sa, 1), "replayed nc");
        assert!(n.nc_fresh(sa, 2));
        assert_eq!(n.tracked(), 1);
        let _b = n.mint(t, &mut rng);
        let c = n.mint(t, &mut rng);
        assert_eq!(n.check(&a, t, LIFE), NonceCheck::Stale, "slot reused");
        assert_eq!(n.tracked(), 0);
        let NonceCheck::Fresh { seq: sc } = n.check(&c, t, LIFE) else {
            panic!("fresh");
        };
        assert!(n.nc_fresh(sc, 1), "a reused slot starts from zero");
        // Another instance with the same secret: valid MAC, but its nc is not tracked here.
        let mut peer = Nonces::new([9; 32], 2);
        let p = peer.mint(t, &mut StdRng::seed_from_u64(2));
        assert_eq!(n.check(&p, t, LIFE), NonceCheck::Stale);
        // Another secret: invalid.
        let mut other = Nonces::new([8; 32], 2);
        let o = other.mint(t, &mut rng);
        assert_eq!(n.check(&o, t, LIFE), NonceCheck::Invalid);
    }

    #[test]
    fn purge_retires_by_age() {
        let mut n = Nonces::new([9; 32], 1024);
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut seqs = Vec::new();
        for s in 0..10 {
            let t = t0 + Duration::from_secs(s * 100);
            let x = n.mint(t, &mut rng);
            let NonceCheck::Fresh { seq } = n.check(&x, t, LIFE) else {
                panic!("fresh");
            };
            n.accept(seq, 1);
            seqs.push(seq);
            n.purge(t, LIFE);
        }
        // At t0+900 nonces from t0+600 on are within 300 s.
        assert_eq!(n.tracked(), 4);
        assert_eq!(n.floor, seqs[6]);
        assert!(n.marks.len() <= 4);
    }
}
